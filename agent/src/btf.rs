//! Reader for the kernel's BTF (BPF Type Format), which supplies the struct
//! member offsets that the kernel programs need.
//!
//! The kernel programs are built with aya, which has no CO-RE relocations, so
//! the loader cannot patch field offsets into them. The agent instead reads
//! the offsets of the running kernel here and hands them to the programs as
//! globals before load. Offsets differ between kernel versions and builds:
//! `file.f_mode`, for example, moved between 6.1 and 6.12.
//!
//! The input is the raw BTF blob that the kernel exposes at
//! `/sys/kernel/btf/vmlinux`: a header, a type section and a string section,
//! as defined in the kernel's `include/uapi/linux/btf.h` and described in
//! `Documentation/bpf/btf.rst`. Only little-endian BTF is supported, and a
//! big-endian blob is rejected with an error. Split BTF (the kernel modules'
//! files under `/sys/kernel/btf/`, whose type ids continue those of vmlinux)
//! is not supported.

use std::{
    collections::{HashMap, HashSet},
    fmt, io,
    path::{Path, PathBuf},
};

/// Path of the running kernel's BTF in sysfs.
pub const SYS_FS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of `struct btf_header` in version 1. A larger `hdr_len` is accepted
/// and the fields past this size are ignored.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, which starts every type record.
const TYPE_RECORD_LEN: usize = 12;
/// Size of `struct btf_member`.
const MEMBER_LEN: usize = 12;

/// Maximum length of a typedef, const, volatile, restrict and type tag chain
/// before a lookup reports the BTF as invalid (a cycle is the likely cause).
const MAX_MODIFIER_CHAIN: usize = 32;
/// Maximum nesting of anonymous structs and unions that a member lookup
/// descends through. The deepest nesting in the 6.18 x86_64 vmlinux is 6 (`struct slab`).
const MAX_ANONYMOUS_DEPTH: usize = 32;

/// BTF kind numbers (`BTF_KIND_*` in `include/uapi/linux/btf.h`).
mod kind {
    pub const VOID: u32 = 0;
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Failure to read or parse BTF, or to find a member in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF {} not found. The kernel must be built with CONFIG_DEBUG_INFO_BTF=y",
        path.display()
    )]
    KernelBtfMissing { path: PathBuf },
    #[error("failed to read BTF from {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid BTF: {reason}")]
    Invalid { reason: String },
    #[error("struct {structure} not found in the BTF")]
    StructNotFound { structure: String },
    #[error(
        "invalid member path {path:?} for struct {structure}. The path must contain at least one name and no empty names"
    )]
    InvalidPath {
        structure: String,
        path: Vec<String>,
    },
    #[error("struct {structure} has no member {member}")]
    MemberNotFound { structure: String, member: String },
    #[error(
        "member {member} of struct {structure} is not an embedded struct or union, so it has no member {next}"
    )]
    NotComposite {
        structure: String,
        member: String,
        next: String,
    },
    #[error("member {member} of struct {structure} is a bitfield and has no byte offset")]
    Bitfield { structure: String, member: String },
    #[error(
        "member {member} of struct {structure} starts at bit {bit_offset}, which is not a byte boundary"
    )]
    NotByteAligned {
        structure: String,
        member: String,
        bit_offset: u64,
    },
    #[error(
        "member {member} has offset {first} in one definition of struct {structure} and {second} in another"
    )]
    Ambiguous {
        structure: String,
        member: String,
        first: u32,
        second: u32,
    },
}

fn invalid(reason: String) -> BtfError {
    BtfError::Invalid { reason }
}

/// Byte offsets that let a tracepoint program read, for the current task, the
/// device and inode of its executable and the superblock of its root mount.
///
/// The executable: `task_struct.mm` → `mm_struct.exe_file` →
/// `file.f_path.dentry` → `dentry.d_inode` → `inode.i_ino` and `inode.i_sb` →
/// `super_block.s_dev`. The root mount: `task_struct.fs` →
/// `fs_struct.root.mnt` → `vfsmount.mnt_sb` → `super_block.s_dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExeIdentityOffsets {
    /// `task_struct.mm`, a `struct mm_struct *`.
    pub task_mm: u32,
    /// `mm_struct.exe_file`, a `struct file *` inside an anonymous struct.
    pub mm_exe_file: u32,
    /// `file.f_path.dentry`, a `struct dentry *`.
    pub file_dentry: u32,
    /// `dentry.d_inode`, a `struct inode *`.
    pub dentry_inode: u32,
    /// `inode.i_ino`, an `unsigned long`.
    pub inode_ino: u32,
    /// `inode.i_sb`, a `struct super_block *`.
    pub inode_sb: u32,
    /// `super_block.s_dev`, a `dev_t` (32 bits).
    pub sb_dev: u32,
    /// `task_struct.fs`, a `struct fs_struct *`.
    pub task_fs: u32,
    /// `fs_struct.root.mnt`, a `struct vfsmount *`.
    pub fs_root_mnt: u32,
    /// `vfsmount.mnt_sb`, a `struct super_block *`.
    pub vfsmount_sb: u32,
}

/// Direct member of a struct or union, as [`KernelBtf::members`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructMember {
    /// `None` for an anonymous struct or union member.
    pub name: Option<String>,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
    /// Width of a bitfield as encoded in the member's offset word, which the
    /// struct's kind_flag enables. 0 for other members, and also for
    /// bitfields of the older encoding that stores the width in the INT type.
    pub bitfield_size: u32,
}

/// One entry of the type section. Kinds whose trailing data no lookup
/// needs keep only the common fields.
#[derive(Clone, Debug)]
struct TypeRecord {
    kind: u32,
    kind_flag: bool,
    /// `size` for INT, STRUCT, UNION, ENUM, ENUM64 and DATASEC, the referenced
    /// type id for the other kinds that have one.
    size_or_type: u32,
    /// The INT encoding word (bit offset and width), 0 for other kinds.
    int_encoding: u32,
    /// Index range in `KernelBtf::members` of a STRUCT or UNION's members.
    first_member: usize,
    member_count: usize,
}

impl TypeRecord {
    fn is_composite(&self) -> bool {
        self.kind == kind::STRUCT || self.kind == kind::UNION
    }

    fn is_modifier(&self) -> bool {
        matches!(
            self.kind,
            kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct MemberRecord {
    name_offset: u32,
    type_id: u32,
    /// Bit offset, or bitfield size (bits 24-31) and bit offset (bits 0-23)
    /// when the containing struct's kind_flag is set.
    offset: u32,
}

impl MemberRecord {
    /// Returns the bit offset and the bitfield size encoded in the offset word.
    fn decode_offset(&self, kind_flag: bool) -> (u32, u32) {
        if kind_flag {
            (self.offset & 0x00ff_ffff, self.offset >> 24)
        } else {
            (self.offset, 0)
        }
    }
}

/// A member found by name, with its offset from the struct where the search
/// started (anonymous containers included).
struct FoundMember {
    bit_offset: u64,
    bitfield_size: u32,
    type_id: u32,
}

/// Parsed kernel BTF, indexed for struct member lookups.
pub struct KernelBtf {
    /// Type records by type id. Id 0 is `void`, which has no record in the
    /// type section, so index 0 is a placeholder.
    types: Vec<TypeRecord>,
    members: Vec<MemberRecord>,
    /// The string section. It starts and ends with a NUL byte.
    strings: Vec<u8>,
    /// Ids of the STRUCT types with each name, in type id order.
    structs_by_name: HashMap<Vec<u8>, Vec<u32>>,
}

impl fmt::Debug for KernelBtf {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KernelBtf")
            .field("types", &(self.types.len() - 1))
            .field("structs", &self.structs_by_name.len())
            .finish()
    }
}

fn read_u32(bytes: &[u8], position: usize) -> Option<u32> {
    let end = position.checked_add(4)?;
    let word = bytes.get(position..end)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Returns the `length` bytes at `offset` in `body`, or an error naming the
/// section if they extend past its end.
fn section<'a>(body: &'a [u8], offset: u32, length: u32, name: &str) -> Result<&'a [u8], BtfError> {
    let start = offset as usize;
    start
        .checked_add(length as usize)
        .and_then(|end| body.get(start..end))
        .ok_or_else(|| {
            invalid(format!(
                "{name} section (offset {offset}, length {length}) extends past the end of the BTF \
                 ({} bytes after the header)",
                body.len()
            ))
        })
}

/// Returns the number of bytes that follow the common record of a type of
/// `kind` with `vlen` entries, or `None` for an unknown kind.
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    let length = match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        _ => return None,
    };
    Some(length)
}

impl KernelBtf {
    /// Reads and parses the running kernel's BTF from [`SYS_FS_VMLINUX`].
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(SYS_FS_VMLINUX)
    }

    /// Reads and parses a raw BTF file, such as a copy of another kernel's
    /// `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BtfError::KernelBtfMissing {
                    path: path.to_owned(),
                }
            } else {
                BtfError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Self::parse(&bytes)
    }

    /// Parses a raw little-endian BTF blob. Every length and offset is checked
    /// against the input, so malformed input returns an error, never a panic.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
            invalid(format!(
                "input is {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ))
        })?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(invalid(
                "input is big-endian BTF, but only little-endian BTF is supported".to_owned(),
            ));
        }
        if magic != BTF_MAGIC {
            return Err(invalid(format!(
                "magic is {magic:#06x}, expected {BTF_MAGIC:#06x}"
            )));
        }
        let version = header[2];
        if version != BTF_VERSION {
            return Err(invalid(format!(
                "version is {version}, only version {BTF_VERSION} is supported"
            )));
        }

        // The five header words after magic, version and flags. `header` is
        // HEADER_LEN bytes long, so each read succeeds.
        let word = |position| read_u32(header, position).unwrap_or(0);
        let header_len = word(4) as usize;
        let (type_off, type_len) = (word(8), word(12));
        let (str_off, str_len) = (word(16), word(20));
        if header_len < HEADER_LEN || header_len > bytes.len() {
            return Err(invalid(format!(
                "header length is {header_len}, expected at least {HEADER_LEN} and at most the \
                 input length {}",
                bytes.len()
            )));
        }

        // Section offsets count from the end of the header.
        let body = bytes.get(header_len..).unwrap_or(&[]);
        let type_section = section(body, type_off, type_len, "type")?;
        let strings = section(body, str_off, str_len, "string")?;
        if strings.first() != Some(&0) || strings.last() != Some(&0) {
            return Err(invalid(
                "string section must start and end with a NUL byte".to_owned(),
            ));
        }

        let mut btf = KernelBtf {
            types: vec![TypeRecord {
                kind: kind::VOID,
                kind_flag: false,
                size_or_type: 0,
                int_encoding: 0,
                first_member: 0,
                member_count: 0,
            }],
            members: Vec::new(),
            strings: strings.to_vec(),
            structs_by_name: HashMap::new(),
        };
        btf.parse_types(type_section)?;
        Ok(btf)
    }

    /// Parses the type section into `self.types`, `self.members` and
    /// `self.structs_by_name`.
    fn parse_types(&mut self, type_section: &[u8]) -> Result<(), BtfError> {
        let mut position = 0;
        while position < type_section.len() {
            let id = self.types.len();
            let truncated = || {
                invalid(format!(
                    "type section ends inside the record of type id {id}"
                ))
            };
            let common = position
                .checked_add(TYPE_RECORD_LEN)
                .and_then(|end| type_section.get(position..end))
                .ok_or_else(truncated)?;
            let name_offset = read_u32(common, 0).ok_or_else(truncated)?;
            let info = read_u32(common, 4).ok_or_else(truncated)?;
            let size_or_type = read_u32(common, 8).ok_or_else(truncated)?;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let vlen = (info & 0xffff) as usize;
            self.check_name_offset(name_offset, id)?;

            let extra_start = position + TYPE_RECORD_LEN;
            let extra_len = trailing_len(kind, vlen)
                .ok_or_else(|| invalid(format!("type id {id} has unknown kind {kind}")))?;
            let extra = extra_start
                .checked_add(extra_len)
                .and_then(|end| type_section.get(extra_start..end))
                .ok_or_else(truncated)?;

            let mut record = TypeRecord {
                kind,
                kind_flag,
                size_or_type,
                int_encoding: 0,
                first_member: self.members.len(),
                member_count: 0,
            };
            if kind == kind::INT {
                record.int_encoding = read_u32(extra, 0).ok_or_else(truncated)?;
            }
            if record.is_composite() {
                for chunk in extra.chunks_exact(MEMBER_LEN) {
                    let member = MemberRecord {
                        name_offset: read_u32(chunk, 0).ok_or_else(truncated)?,
                        type_id: read_u32(chunk, 4).ok_or_else(truncated)?,
                        offset: read_u32(chunk, 8).ok_or_else(truncated)?,
                    };
                    self.check_name_offset(member.name_offset, id)?;
                    self.members.push(member);
                }
                record.member_count = vlen;
            }
            if kind == kind::STRUCT && name_offset != 0 {
                let name = self.name(name_offset).to_vec();
                let id = u32::try_from(id)
                    .map_err(|_| invalid(format!("type id {id} does not fit in 32 bits")))?;
                self.structs_by_name.entry(name).or_default().push(id);
            }
            self.types.push(record);
            position = extra_start + extra_len;
        }
        Ok(())
    }

    fn check_name_offset(&self, name_offset: u32, id: usize) -> Result<(), BtfError> {
        if name_offset as usize >= self.strings.len() {
            return Err(invalid(format!(
                "type id {id} refers to name offset {name_offset}, outside the {}-byte string section",
                self.strings.len()
            )));
        }
        Ok(())
    }

    /// Returns the NUL-terminated string at `offset`, or an empty string if the
    /// offset is out of range (`parse` rejects such offsets).
    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        let end = rest
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    }

    fn type_record(&self, id: u32) -> Result<&TypeRecord, BtfError> {
        self.types.get(id as usize).ok_or_else(|| {
            invalid(format!(
                "type id {id} is out of range; the BTF has {} types",
                self.types.len() - 1
            ))
        })
    }

    fn members_of(&self, record: &TypeRecord) -> &[MemberRecord] {
        let end = record.first_member.saturating_add(record.member_count);
        self.members.get(record.first_member..end).unwrap_or(&[])
    }

    /// Follows typedef, const, volatile, restrict and type tag references from
    /// `id` to the first type of another kind, and returns that type's id.
    fn skip_modifiers(&self, id: u32) -> Result<u32, BtfError> {
        let mut current = id;
        for _ in 0..MAX_MODIFIER_CHAIN {
            let record = self.type_record(current)?;
            if !record.is_modifier() {
                return Ok(current);
            }
            current = record.size_or_type;
        }
        Err(invalid(format!(
            "type id {id} starts a typedef or qualifier chain longer than {MAX_MODIFIER_CHAIN} types"
        )))
    }

    /// Returns whether `type_id` is an INT whose encoding marks a bitfield,
    /// which is how BTF describes bitfields in structs without kind_flag.
    fn is_int_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        let record = self.type_record(self.skip_modifiers(type_id)?)?;
        if record.kind != kind::INT {
            return Ok(false);
        }
        let bits = u64::from(record.int_encoding & 0xff);
        let bit_offset = (record.int_encoding >> 16) & 0xff;
        Ok(bit_offset != 0 || bits != u64::from(record.size_or_type) * 8)
    }

    /// Ids of the STRUCT types named `structure`. Several definitions exist
    /// when the BTF deduplication could not merge them.
    fn struct_ids(&self, structure: &str) -> Result<&[u32], BtfError> {
        self.structs_by_name
            .get(structure.as_bytes())
            .map(Vec::as_slice)
            .ok_or_else(|| BtfError::StructNotFound {
                structure: structure.to_owned(),
            })
    }

    /// Returns the size in bytes of struct `structure` (its first definition
    /// if the BTF has several).
    pub fn struct_size(&self, structure: &str) -> Result<u32, BtfError> {
        let id = self.struct_ids(structure)?.first().copied().unwrap_or(0);
        Ok(self.type_record(id)?.size_or_type)
    }

    /// Lists the direct members of struct `structure` (its first definition if
    /// the BTF has several), without descending into anonymous members.
    pub fn members(&self, structure: &str) -> Result<Vec<StructMember>, BtfError> {
        let id = self.struct_ids(structure)?.first().copied().unwrap_or(0);
        let record = self.type_record(id)?;
        let members = self
            .members_of(record)
            .iter()
            .map(|member| {
                let (bit_offset, bitfield_size) = member.decode_offset(record.kind_flag);
                let name = self.name(member.name_offset);
                StructMember {
                    name: (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()),
                    bit_offset,
                    bitfield_size,
                }
            })
            .collect();
        Ok(members)
    }

    /// Computes the byte offset of a member of struct `structure`, following
    /// `path` through embedded structs: `member_offset("file", &["f_path",
    /// "dentry"])` is the offset of `file.f_path` plus that of `path.dentry`.
    ///
    /// Anonymous struct and union members are searched transparently, adding
    /// their offsets. Typedefs and qualifiers are followed to reach the struct
    /// type of an embedded member. Pointers are not followed, because reading
    /// through one needs a separate read in the kernel program.
    ///
    /// If the BTF has several definitions of `structure`, the offset must be
    /// the same in every definition where the path exists.
    pub fn member_offset(&self, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
        if path.is_empty() || path.iter().any(|name| name.is_empty()) {
            return Err(BtfError::InvalidPath {
                structure: structure.to_owned(),
                path: path.iter().map(|name| (*name).to_owned()).collect(),
            });
        }
        let mut offset: Option<u32> = None;
        let mut first_error = None;
        for &id in self.struct_ids(structure)? {
            match self.member_offset_in(id, structure, path) {
                Ok(found) => match offset {
                    Some(previous) if previous != found => {
                        return Err(BtfError::Ambiguous {
                            structure: structure.to_owned(),
                            member: path.join("."),
                            first: previous,
                            second: found,
                        });
                    }
                    _ => offset = Some(found),
                },
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match (offset, first_error) {
            (Some(offset), _) => Ok(offset),
            (None, Some(error)) => Err(error),
            (None, None) => Err(BtfError::StructNotFound {
                structure: structure.to_owned(),
            }),
        }
    }

    /// Computes the byte offset of `path` in the struct with type id
    /// `struct_id`.
    fn member_offset_in(
        &self,
        struct_id: u32,
        structure: &str,
        path: &[&str],
    ) -> Result<u32, BtfError> {
        let mut composite = struct_id;
        let mut total_bits: u64 = 0;
        for (index, name) in path.iter().enumerate() {
            let member_path = || path[..=index].join(".");
            let mut visited = HashSet::new();
            let found = self
                .find_member(composite, name.as_bytes(), 0, &mut visited)?
                .ok_or_else(|| BtfError::MemberNotFound {
                    structure: structure.to_owned(),
                    member: member_path(),
                })?;
            if found.bitfield_size != 0 || self.is_int_bitfield(found.type_id)? {
                return Err(BtfError::Bitfield {
                    structure: structure.to_owned(),
                    member: member_path(),
                });
            }
            if found.bit_offset % 8 != 0 {
                return Err(BtfError::NotByteAligned {
                    structure: structure.to_owned(),
                    member: member_path(),
                    bit_offset: found.bit_offset,
                });
            }
            // Each step adds less than 2^33 bits, so the sum cannot overflow
            // for any path that fits in memory.
            total_bits = total_bits.saturating_add(found.bit_offset);

            if let Some(next) = path.get(index + 1) {
                let target = self.skip_modifiers(found.type_id)?;
                if !self.type_record(target)?.is_composite() {
                    return Err(BtfError::NotComposite {
                        structure: structure.to_owned(),
                        member: member_path(),
                        next: (*next).to_owned(),
                    });
                }
                composite = target;
            }
        }
        u32::try_from(total_bits / 8).map_err(|_| {
            invalid(format!(
                "offset of {} in struct {structure} is {total_bits} bits, beyond 32-bit byte offsets",
                path.join(".")
            ))
        })
    }

    /// Searches the struct or union `composite` for a member named `name`,
    /// descending into anonymous struct and union members in declaration
    /// order. `visited` contains the types already searched, so that a cyclic
    /// or repetitive BTF cannot make the search loop or grow exponentially.
    fn find_member(
        &self,
        composite: u32,
        name: &[u8],
        depth: usize,
        visited: &mut HashSet<u32>,
    ) -> Result<Option<FoundMember>, BtfError> {
        if !visited.insert(composite) {
            return Ok(None);
        }
        let record = self.type_record(composite)?;
        for member in self.members_of(record) {
            let (bit_offset, bitfield_size) = member.decode_offset(record.kind_flag);
            let member_name = self.name(member.name_offset);
            if member_name == name {
                return Ok(Some(FoundMember {
                    bit_offset: u64::from(bit_offset),
                    bitfield_size,
                    type_id: member.type_id,
                }));
            }
            if !member_name.is_empty() {
                continue;
            }
            let inner = self.skip_modifiers(member.type_id)?;
            if !self.type_record(inner)?.is_composite() {
                continue;
            }
            if depth >= MAX_ANONYMOUS_DEPTH {
                return Err(invalid(format!(
                    "anonymous members of type id {composite} nest deeper than {MAX_ANONYMOUS_DEPTH} levels"
                )));
            }
            if let Some(mut found) = self.find_member(inner, name, depth + 1, visited)? {
                found.bit_offset += u64::from(bit_offset);
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Looks up the offsets in [`ExeIdentityOffsets`].
    /// Reads the offsets the BPF LSM programs follow: from a `struct file`
    /// or `struct path` to its mount and dentry, from a `struct vfsmount`
    /// to the `struct mount` around it and its id, up the dentry and mount
    /// trees to rebuild a path, and from an inode to its type, link count,
    /// number and device.
    pub fn lsm_offsets(&self) -> Result<parapet_common::lsm::LsmOffsets, BtfError> {
        Ok(parapet_common::lsm::LsmOffsets {
            valid: 1,
            file_path_mnt: self.member_offset("file", &["f_path", "mnt"])?,
            file_path_dentry: self.member_offset("file", &["f_path", "dentry"])?,
            file_mode: self.member_offset("file", &["f_mode"])?,
            file_flags: self.member_offset("file", &["f_flags"])?,
            path_mnt: self.member_offset("path", &["mnt"])?,
            path_dentry: self.member_offset("path", &["dentry"])?,
            mount_mnt: self.member_offset("mount", &["mnt"])?,
            mount_id: self.member_offset("mount", &["mnt_id"])?,
            mount_parent: self.member_offset("mount", &["mnt_parent"])?,
            mount_mountpoint: self.member_offset("mount", &["mnt_mountpoint"])?,
            vfsmount_root: self.member_offset("vfsmount", &["mnt_root"])?,
            dentry_parent: self.member_offset("dentry", &["d_parent"])?,
            dentry_name_len: self.member_offset("dentry", &["d_name", "len"])?,
            dentry_name: self.member_offset("dentry", &["d_name", "name"])?,
            dentry_inode: self.member_offset("dentry", &["d_inode"])?,
            inode_mode: self.member_offset("inode", &["i_mode"])?,
            inode_nlink: self.member_offset("inode", &["i_nlink"])?,
            inode_ino: self.member_offset("inode", &["i_ino"])?,
            inode_sb: self.member_offset("inode", &["i_sb"])?,
            sb_dev: self.member_offset("super_block", &["s_dev"])?,
            bprm_file: self.member_offset("linux_binprm", &["file"])?,
            bprm_filename: self.member_offset("linux_binprm", &["filename"])?,
            vma_file: self.member_offset("vm_area_struct", &["vm_file"])?,
            vma_flags: self.member_offset("vm_area_struct", &["vm_flags"])?,
        })
    }

    pub fn lsm_net_offsets(&self) -> Result<parapet_common::lsm::LsmNetOffsets, BtfError> {
        Ok(parapet_common::lsm::LsmNetOffsets {
            valid: 1,
            socket_type: self.member_offset("socket", &["type"])?,
            socket_sk: self.member_offset("socket", &["sk"])?,
            sock_family: self.member_offset("sock", &["__sk_common", "skc_family"])?,
            sock_protocol: self.member_offset("sock", &["sk_protocol"])?,
            msghdr_name: self.member_offset("msghdr", &["msg_name"])?,
            msghdr_namelen: self.member_offset("msghdr", &["msg_namelen"])?,
            msghdr_flags: self.member_offset("msghdr", &["msg_flags"])?,
            sock_daddr: self.member_offset("sock", &["__sk_common", "skc_daddr"])?,
            sock_dport: self.member_offset("sock", &["__sk_common", "skc_dport"])?,
            sock_v6_daddr: self.member_offset("sock", &["__sk_common", "skc_v6_daddr"])?,
        })
    }

    pub fn exe_identity_offsets(&self) -> Result<ExeIdentityOffsets, BtfError> {
        Ok(ExeIdentityOffsets {
            task_mm: self.member_offset("task_struct", &["mm"])?,
            mm_exe_file: self.member_offset("mm_struct", &["exe_file"])?,
            file_dentry: self.member_offset("file", &["f_path", "dentry"])?,
            dentry_inode: self.member_offset("dentry", &["d_inode"])?,
            inode_ino: self.member_offset("inode", &["i_ino"])?,
            inode_sb: self.member_offset("inode", &["i_sb"])?,
            sb_dev: self.member_offset("super_block", &["s_dev"])?,
            task_fs: self.member_offset("task_struct", &["fs"])?,
            fs_root_mnt: self.member_offset("fs_struct", &["root", "mnt"])?,
            vfsmount_sb: self.member_offset("vfsmount", &["mnt_sb"])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw BTF blobs type by type, numbering types from 1 in the order
    /// they are added.
    struct BlobBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BlobBuilder {
        fn new() -> Self {
            BlobBuilder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, text: &str) -> u32 {
            if text.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(text.as_bytes());
            self.strings.push(0);
            offset
        }

        fn push_words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        /// Adds a type record and its trailing words, and returns the type id.
        fn add(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            trailing: &[u32],
        ) -> u32 {
            let name_offset = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            self.push_words(&[name_offset, info, size_or_type]);
            self.push_words(trailing);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.add(name, kind::INT, false, 0, size, &[size * 8])
        }

        fn pointer(&mut self, target: u32) -> u32 {
            self.add("", kind::PTR, false, 0, target, &[])
        }

        fn reference(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.add(name, kind, false, 0, target, &[])
        }

        /// Adds a struct or union whose members are (name, type id, offset
        /// word); the offset word is in bits, or bitfield size << 24 | bit
        /// offset when `kind_flag` is set.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut words = Vec::new();
            for (member_name, type_id, offset) in members {
                words.extend([self.string(member_name), *type_id, *offset]);
            }
            self.add(name, kind, kind_flag, members.len() as u32, size, &words)
        }

        fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(kind::STRUCT, name, size, false, members)
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            blob.push(BTF_VERSION);
            blob.push(0);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for word in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// Offsets that `kernel_like_blob` gives the members that
    /// `exe_identity_offsets` looks up.
    const EXPECTED: ExeIdentityOffsets = ExeIdentityOffsets {
        task_mm: 1168,
        mm_exe_file: 856,
        file_dentry: 72,
        dentry_inode: 48,
        inode_ino: 64,
        inode_sb: 40,
        sb_dev: 16,
        task_fs: 1816,
        fs_root_mnt: 24,
        vfsmount_sb: 8,
    };

    /// Builds a BTF with the kernel's shapes. `mm_struct` keeps its members in
    /// an anonymous struct, `file.f_path` is reached through a const typedef,
    /// and `dentry.d_inode` follows an anonymous union. Every other kind of
    /// type appears at least once, so the parser must skip each kind's
    /// trailing data correctly to find the later types.
    fn kernel_like_blob() -> Vec<u8> {
        let mut builder = BlobBuilder::new();
        let unsigned_int = builder.int("unsigned int", 4);
        let unsigned_long = builder.int("long unsigned int", 8);
        let void_pointer = builder.pointer(0);

        // Kinds that no lookup uses, each with its trailing data.
        builder.add(
            "",
            kind::ARRAY,
            false,
            0,
            0,
            &[unsigned_int, unsigned_long, 16],
        );
        let enumerator = builder.string("ONE");
        builder.add(
            "numbers",
            kind::ENUM,
            false,
            2,
            4,
            &[enumerator, 1, enumerator, 2],
        );
        builder.add("later", kind::FWD, false, 0, 0, &[]);
        builder.reference(kind::VOLATILE, "", unsigned_int);
        builder.reference(kind::RESTRICT, "", void_pointer);
        let parameter = builder.string("argument");
        let prototype = builder.add(
            "",
            kind::FUNC_PROTO,
            false,
            1,
            unsigned_int,
            &[parameter, unsigned_long],
        );
        builder.add("function", kind::FUNC, false, 1, prototype, &[]);
        let variable = builder.add("variable", kind::VAR, false, 0, unsigned_int, &[1]);
        builder.add(".data", kind::DATASEC, false, 1, 4, &[variable, 0, 4]);
        builder.add("double", kind::FLOAT, false, 0, 8, &[]);
        builder.add("tag", kind::DECL_TAG, false, 0, variable, &[u32::MAX]);
        builder.reference(kind::TYPE_TAG, "user", void_pointer);
        let large = builder.string("LARGE");
        builder.add("wide", kind::ENUM64, false, 1, 8, &[large, 0, 1]);

        // A struct with the same name as a later one, as deduplication can
        // leave behind; both definitions agree on the offsets used below.
        let vfsmount_fields = [("mnt_root", void_pointer, 0), ("mnt_sb", void_pointer, 64)];
        builder.structure("vfsmount", 32, &vfsmount_fields);

        let path = builder.structure(
            "path",
            16,
            &[("mnt", void_pointer, 0), ("dentry", void_pointer, 64)],
        );
        let path_typedef = builder.reference(kind::TYPEDEF, "path_t", path);
        let const_path = builder.reference(kind::CONST, "", path_typedef);
        builder.structure(
            "file",
            200,
            &[("f_mode", unsigned_int, 0), ("f_path", const_path, 64 * 8)],
        );

        let hash_union = builder.composite(
            kind::UNION,
            "",
            16,
            false,
            &[("d_hash", unsigned_long, 0), ("d_alias", unsigned_long, 0)],
        );
        builder.structure(
            "dentry",
            192,
            &[
                ("d_flags", unsigned_int, 0),
                ("", hash_union, 64),
                ("d_inode", void_pointer, 48 * 8),
            ],
        );

        builder.structure(
            "inode",
            600,
            &[
                ("i_mode", unsigned_int, 0),
                ("i_sb", void_pointer, 40 * 8),
                ("i_ino", unsigned_long, 64 * 8),
            ],
        );
        builder.structure(
            "super_block",
            1400,
            &[
                ("s_list", unsigned_long, 0),
                ("s_dev", unsigned_int, 16 * 8),
            ],
        );

        // mm_struct { struct { ...; struct { ...; exe_file; }; }; cpu_bitmap; }
        let inner = builder.structure(
            "",
            64,
            &[
                ("flags", unsigned_long, 0),
                ("exe_file", void_pointer, 24 * 8),
            ],
        );
        let outer = builder.structure(
            "",
            1024,
            &[("mm_users", unsigned_int, 0), ("", inner, 832 * 8)],
        );
        builder.structure(
            "mm_struct",
            1100,
            &[("", outer, 0), ("cpu_bitmap", unsigned_long, 1024 * 8)],
        );

        builder.structure(
            "fs_struct",
            56,
            &[("users", unsigned_int, 0), ("root", path, 24 * 8)],
        );
        builder.structure(
            "task_struct",
            3000,
            &[
                ("mm", void_pointer, 1168 * 8),
                ("fs", void_pointer, 1816 * 8),
            ],
        );
        builder.structure("vfsmount", 32, &vfsmount_fields);
        builder.build()
    }

    fn parse_ok(blob: &[u8]) -> KernelBtf {
        match KernelBtf::parse(blob) {
            Ok(btf) => btf,
            Err(error) => panic!("parse failed: {error}"),
        }
    }

    #[test]
    fn exe_identity_offsets_in_kernel_like_blob() {
        let btf = parse_ok(&kernel_like_blob());
        let offsets = btf.exe_identity_offsets().expect("all members exist");
        assert_eq!(offsets, EXPECTED);
    }

    #[test]
    fn member_offset_descends_anonymous_structs() {
        let btf = parse_ok(&kernel_like_blob());
        assert_eq!(btf.member_offset("mm_struct", &["exe_file"]).unwrap(), 856);
        assert_eq!(btf.member_offset("mm_struct", &["mm_users"]).unwrap(), 0);
        assert_eq!(
            btf.member_offset("mm_struct", &["cpu_bitmap"]).unwrap(),
            1024
        );
    }

    #[test]
    fn member_offset_descends_anonymous_union() {
        let btf = parse_ok(&kernel_like_blob());
        assert_eq!(btf.member_offset("dentry", &["d_hash"]).unwrap(), 8);
        assert_eq!(btf.member_offset("dentry", &["d_alias"]).unwrap(), 8);
    }

    #[test]
    fn member_offset_follows_typedef_and_const() {
        let btf = parse_ok(&kernel_like_blob());
        assert_eq!(btf.member_offset("file", &["f_path"]).unwrap(), 64);
        assert_eq!(btf.member_offset("file", &["f_path", "mnt"]).unwrap(), 64);
        assert_eq!(
            btf.member_offset("file", &["f_path", "dentry"]).unwrap(),
            72
        );
    }

    #[test]
    fn members_lists_anonymous_member() {
        let btf = parse_ok(&kernel_like_blob());
        let members = btf.members("mm_struct").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].name, None);
        assert_eq!(members[1].name.as_deref(), Some("cpu_bitmap"));
        assert_eq!(members[1].bit_offset, 1024 * 8);
        assert_eq!(btf.struct_size("mm_struct").unwrap(), 1100);
    }

    #[test]
    fn lookup_errors_name_struct_and_path() {
        let btf = parse_ok(&kernel_like_blob());

        let error = btf
            .member_offset("file", &["f_path", "missing"])
            .unwrap_err();
        assert!(
            matches!(error, BtfError::MemberNotFound { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "struct file has no member f_path.missing"
        );

        let error = btf
            .member_offset("task_struct", &["mm", "exe_file"])
            .unwrap_err();
        assert!(matches!(error, BtfError::NotComposite { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("member mm of struct task_struct"),
            "{message}"
        );
        assert!(message.contains("no member exe_file"), "{message}");

        let error = btf.member_offset("no_such_struct", &["x"]).unwrap_err();
        assert!(
            matches!(error, BtfError::StructNotFound { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("no_such_struct"));

        let error = btf.member_offset("file", &[]).unwrap_err();
        assert!(matches!(error, BtfError::InvalidPath { .. }), "{error:?}");
        let error = btf.member_offset("file", &["f_path", ""]).unwrap_err();
        assert!(matches!(error, BtfError::InvalidPath { .. }), "{error:?}");
    }

    #[test]
    fn member_offset_rejects_bitfields() {
        let mut builder = BlobBuilder::new();
        let unsigned_int = builder.int("unsigned int", 4);
        // Bitfield size in the member's offset word (kind_flag set).
        builder.composite(
            kind::STRUCT,
            "flagged",
            8,
            true,
            &[
                ("narrow", unsigned_int, (3 << 24) | 5),
                ("wide", unsigned_int, 32),
            ],
        );
        // Older encoding: the width sits in an INT type with 3 bits.
        let three_bits = builder.add("unsigned int", kind::INT, false, 0, 4, &[3]);
        builder.structure("legacy", 4, &[("narrow", three_bits, 0)]);
        builder.structure("misaligned", 8, &[("odd", unsigned_int, 4)]);
        let btf = parse_ok(&builder.build());

        let error = btf.member_offset("flagged", &["narrow"]).unwrap_err();
        assert!(matches!(error, BtfError::Bitfield { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "member narrow of struct flagged is a bitfield and has no byte offset"
        );
        assert_eq!(btf.member_offset("flagged", &["wide"]).unwrap(), 4);

        let error = btf.member_offset("legacy", &["narrow"]).unwrap_err();
        assert!(matches!(error, BtfError::Bitfield { .. }), "{error:?}");

        let error = btf.member_offset("misaligned", &["odd"]).unwrap_err();
        assert!(
            matches!(error, BtfError::NotByteAligned { bit_offset: 4, .. }),
            "{error:?}"
        );

        let members = btf.members("flagged").unwrap();
        assert_eq!(members[0].bit_offset, 5);
        assert_eq!(members[0].bitfield_size, 3);
    }

    #[test]
    fn member_offset_rejects_disagreeing_definitions() {
        let mut builder = BlobBuilder::new();
        let unsigned_int = builder.int("unsigned int", 4);
        builder.structure("twice", 8, &[("field", unsigned_int, 0)]);
        builder.structure("twice", 8, &[("field", unsigned_int, 32)]);
        let btf = parse_ok(&builder.build());
        let error = btf.member_offset("twice", &["field"]).unwrap_err();
        assert!(
            matches!(
                error,
                BtfError::Ambiguous {
                    first: 0,
                    second: 4,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn lookups_survive_cycles() {
        let mut builder = BlobBuilder::new();
        // Type 1 is a typedef of itself, and type 2 an anonymous struct that
        // contains itself. No C source produces these, but a blob can encode them.
        builder.reference(kind::TYPEDEF, "loop", 1);
        builder.structure("", 4, &[("", 2, 0)]);
        builder.structure("holder", 8, &[("", 2, 0), ("looped", 1, 0)]);
        builder.structure("dangling", 4, &[("", 999, 0)]);
        let btf = parse_ok(&builder.build());

        let error = btf.member_offset("holder", &["missing"]).unwrap_err();
        assert!(
            matches!(error, BtfError::MemberNotFound { .. }),
            "{error:?}"
        );
        let error = btf.member_offset("holder", &["looped", "x"]).unwrap_err();
        assert!(matches!(error, BtfError::Invalid { .. }), "{error:?}");
        let error = btf.member_offset("dangling", &["x"]).unwrap_err();
        assert!(matches!(error, BtfError::Invalid { .. }), "{error:?}");
    }

    fn parse_error(blob: &[u8]) -> String {
        match KernelBtf::parse(blob) {
            Ok(_) => panic!("parse accepted invalid input"),
            Err(error) => error.to_string(),
        }
    }

    fn set_word(blob: &mut [u8], position: usize, value: u32) {
        blob[position..position + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn parse_rejects_invalid_headers() {
        let valid = kernel_like_blob();

        let mut big_endian = valid.clone();
        big_endian.swap(0, 1);
        assert!(parse_error(&big_endian).contains("big-endian"));

        let mut bad_magic = valid.clone();
        bad_magic[0] = 0;
        assert!(parse_error(&bad_magic).contains("magic"));

        let mut version_two = valid.clone();
        version_two[2] = 2;
        assert!(parse_error(&version_two).contains("version is 2"));

        let mut short_header = valid.clone();
        set_word(&mut short_header, 4, 8);
        assert!(parse_error(&short_header).contains("header length is 8"));

        let mut long_header = valid.clone();
        set_word(&mut long_header, 4, u32::MAX);
        assert!(parse_error(&long_header).contains("header length"));

        let mut types_past_end = valid.clone();
        set_word(&mut types_past_end, 12, u32::MAX);
        assert!(parse_error(&types_past_end).contains("type section"));

        let mut strings_past_end = valid.clone();
        set_word(&mut strings_past_end, 16, u32::MAX);
        assert!(parse_error(&strings_past_end).contains("string section"));

        let mut unterminated = valid.clone();
        *unterminated.last_mut().unwrap() = b'x';
        assert!(parse_error(&unterminated).contains("NUL"));
    }

    #[test]
    fn parse_rejects_invalid_types() {
        let mut builder = BlobBuilder::new();
        builder.add("", 31, false, 0, 0, &[]);
        assert!(parse_error(&builder.build()).contains("unknown kind 31"));

        let mut builder = BlobBuilder::new();
        builder.add("", kind::STRUCT, false, 0, 0, &[]);
        let mut blob = builder.build();
        // Name offset of type 1 past the string section.
        set_word(&mut blob, HEADER_LEN, 1000);
        assert!(parse_error(&blob).contains("name offset 1000"));

        let mut builder = BlobBuilder::new();
        // A struct that claims 5 members but carries none.
        builder.add("short", kind::STRUCT, false, 5, 8, &[]);
        assert!(parse_error(&builder.build()).contains("type id 1"));
    }

    #[test]
    fn parse_rejects_every_truncation() {
        let valid = kernel_like_blob();
        assert!(KernelBtf::parse(&valid).is_ok());
        for length in 0..valid.len() {
            assert!(
                KernelBtf::parse(&valid[..length]).is_err(),
                "accepted the blob truncated to {length} of {} bytes",
                valid.len()
            );
        }
    }

    /// xorshift64, so that the random inputs are the same on every run.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// Runs every lookup on `bytes` if they parse. The test passes as long as
    /// nothing panics or loops.
    fn exercise(bytes: &[u8]) {
        if let Ok(btf) = KernelBtf::parse(bytes) {
            let _ = btf.exe_identity_offsets();
            let _ = btf.member_offset("file", &["f_path", "dentry"]);
            let _ = btf.members("mm_struct");
            let _ = btf.struct_size("dentry");
        }
    }

    /// Builds a blob of random type records with small kinds, member counts
    /// and type ids, named after the structs and members that the lookups
    /// request.
    fn random_types(random: &mut Random) -> Vec<u8> {
        const NAMES: [&str; 12] = [
            "",
            "file",
            "f_path",
            "dentry",
            "mm_struct",
            "exe_file",
            "task_struct",
            "mm",
            "path",
            "fs_struct",
            "root",
            "mnt",
        ];
        let mut builder = BlobBuilder::new();
        let name_offsets: Vec<u32> = NAMES.iter().map(|name| builder.string(name)).collect();
        for _ in 0..random.below(24) {
            let name = name_offsets[random.below(name_offsets.len())];
            let kind = random.below(21) as u32;
            let kind_flag = u32::from(random.below(2) == 1);
            let vlen = random.below(4) as u32;
            let size_or_type = random.below(30) as u32;
            builder.push_words(&[name, (kind_flag << 31) | (kind << 24) | vlen, size_or_type]);
            let trailing_words = trailing_len(kind, vlen as usize).unwrap_or(random.below(8)) / 4;
            for _ in 0..trailing_words {
                let word = match random.below(3) {
                    0 => name_offsets[random.below(name_offsets.len())],
                    1 => random.below(30) as u32,
                    _ => random.next() as u32,
                };
                builder.push_words(&[word]);
            }
        }
        builder.build()
    }

    #[test]
    fn parse_survives_random_input() {
        let mut random = Random(0x5eed_f00d);
        let valid = kernel_like_blob();
        for _ in 0..20_000 {
            // Pure noise, which the header checks reject early.
            let noise: Vec<u8> = (0..random.below(256))
                .map(|_| random.next() as u8)
                .collect();
            exercise(&noise);

            // Random type records over names that the lookups request, which
            // reaches the type parser and lookups on random type graphs.
            exercise(&random_types(&mut random));

            // The valid blob with a few bytes changed, which reaches lookups
            // on corrupt types.
            let mut mutated = valid.clone();
            for _ in 0..1 + random.below(4) {
                let position = random.below(mutated.len());
                mutated[position] = random.next() as u8;
            }
            exercise(&mutated);
        }
    }
}
