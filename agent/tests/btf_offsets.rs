//! Reads this machine's kernel BTF with `parapet::btf` and checks the offsets
//! against the kernel's own layout rules and, where installed, against
//! `bpftool btf dump` and `pahole`.
//!
//! A check whose input is missing prints a SKIPPED line with the reason to
//! stderr (outside the test harness's capture, so it shows in every run) and
//! passes.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use parapet::btf::{ExeIdentityOffsets, KernelBtf, SYS_FS_VMLINUX};
use serde_json::Value;

fn report_skip(check: &str, reason: &str) {
    // Written to the real stderr because libtest captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "SKIPPED {check}: {reason}");
}

fn load_kernel_btf(check: &str) -> Option<KernelBtf> {
    if !Path::new(SYS_FS_VMLINUX).exists() {
        report_skip(
            check,
            &format!(
                "{SYS_FS_VMLINUX} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF)"
            ),
        );
        return None;
    }
    Some(KernelBtf::from_sys_fs().expect("kernel BTF parses"))
}

/// Pairs each offset with the struct and member path it was looked up from.
fn labelled(offsets: &ExeIdentityOffsets) -> [(&'static str, &'static [&'static str], u32); 10] {
    [
        ("task_struct", &["mm"], offsets.task_mm),
        ("mm_struct", &["exe_file"], offsets.mm_exe_file),
        ("file", &["f_path", "dentry"], offsets.file_dentry),
        ("dentry", &["d_inode"], offsets.dentry_inode),
        ("inode", &["i_ino"], offsets.inode_ino),
        ("inode", &["i_sb"], offsets.inode_sb),
        ("super_block", &["s_dev"], offsets.sb_dev),
        ("task_struct", &["fs"], offsets.task_fs),
        ("fs_struct", &["root", "mnt"], offsets.fs_root_mnt),
        ("vfsmount", &["mnt_sb"], offsets.vfsmount_sb),
    ]
}

#[test]
fn kernel_offsets_are_plausible() {
    let Some(btf) = load_kernel_btf("kernel_offsets_are_plausible") else {
        return;
    };
    let offsets = btf.exe_identity_offsets().expect("all members exist");
    let _ = writeln!(std::io::stderr(), "kernel BTF offsets: {offsets:?}");

    for (structure, path, offset) in labelled(&offsets) {
        let name = format!("{structure}.{}", path.join("."));
        let size = btf.struct_size(structure).expect("struct exists");
        assert!(
            offset < size,
            "{name} at {offset} is outside the {size}-byte struct"
        );
        // s_dev is a 32-bit dev_t, every other member a pointer or an
        // unsigned long, so each sits on its natural alignment.
        let alignment = if name == "super_block.s_dev" { 4 } else { 8 };
        assert_eq!(
            offset % alignment,
            0,
            "{name} at {offset} is not {alignment}-byte aligned"
        );
    }

    // In 6.18 no path starts at the first member of its struct (checked with
    // pahole), so an offset of 0 means a wrong lookup.
    // NOTE: CONFIG_RANDSTRUCT shuffles task_struct, mm_struct and others, and
    // could put one of these members first, making this check fail wrongly.
    assert_ne!(offsets.task_mm, 0);
    assert_ne!(offsets.mm_exe_file, 0);
    assert_ne!(offsets.file_dentry, 0);
    assert_ne!(offsets.dentry_inode, 0);
    assert_ne!(offsets.inode_ino, 0);
    assert_ne!(offsets.inode_sb, 0);
    assert_ne!(offsets.sb_dev, 0);
    assert_ne!(offsets.task_fs, 0);
    assert_ne!(offsets.fs_root_mnt, 0);
    assert_ne!(offsets.vfsmount_sb, 0);
    assert_ne!(offsets.task_mm, offsets.task_fs);
    assert_ne!(offsets.inode_ino, offsets.inode_sb);

    // file.f_path.dentry is 8 bytes past f_path, because struct path is
    // { struct vfsmount *mnt; struct dentry *dentry; }.
    let f_path = btf
        .member_offset("file", &["f_path"])
        .expect("file.f_path exists");
    assert_eq!(offsets.file_dentry, f_path + 8);
    let root = btf
        .member_offset("fs_struct", &["root"])
        .expect("fs_struct.root exists");
    assert_eq!(offsets.fs_root_mnt, root);
}

#[test]
fn mm_exe_file_is_inside_anonymous_struct() {
    let Some(btf) = load_kernel_btf("mm_exe_file_is_inside_anonymous_struct") else {
        return;
    };
    let members = btf.members("mm_struct").expect("mm_struct exists");
    let named: Vec<&str> = members
        .iter()
        .filter_map(|member| member.name.as_deref())
        .collect();
    assert!(
        !named.contains(&"exe_file"),
        "exe_file is a direct member: {named:?}"
    );
    assert!(
        members.iter().any(|member| member.name.is_none()),
        "mm_struct has no anonymous member: {members:?}"
    );
    let offset = btf
        .member_offset("mm_struct", &["exe_file"])
        .expect("exe_file found");
    assert_ne!(offset, 0);
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

/// Type records of `bpftool -j btf dump file`, by type id, and the ids of
/// the STRUCT records by name.
struct BpftoolTypes {
    by_id: HashMap<u64, Value>,
    structs_by_name: HashMap<String, Vec<u64>>,
}

impl BpftoolTypes {
    fn load(bpftool: &Path) -> Self {
        let output = Command::new(bpftool)
            .args(["-j", "btf", "dump", "file", SYS_FS_VMLINUX])
            .output()
            .expect("bpftool runs");
        assert!(
            output.status.success(),
            "bpftool failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let dump: Value = serde_json::from_slice(&output.stdout).expect("bpftool prints JSON");
        let types = dump["types"]
            .as_array()
            .expect("bpftool JSON has a types array");
        let mut by_id = HashMap::new();
        let mut structs_by_name: HashMap<String, Vec<u64>> = HashMap::new();
        for record in types {
            let id = record["id"].as_u64().expect("type id");
            if record["kind"] == "STRUCT" {
                let name = record["name"].as_str().expect("struct name");
                structs_by_name.entry(name.to_owned()).or_default().push(id);
            }
            by_id.insert(id, record.clone());
        }
        BpftoolTypes {
            by_id,
            structs_by_name,
        }
    }

    fn get(&self, id: u64) -> &Value {
        self.by_id
            .get(&id)
            .unwrap_or_else(|| panic!("bpftool has no type id {id}"))
    }

    fn structs_named(&self, name: &str) -> &[u64] {
        self.structs_by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn skip_modifiers(&self, mut id: u64) -> u64 {
        loop {
            let record = self.get(id);
            match record["kind"].as_str() {
                Some("TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG") => {
                    id = record["type_id"].as_u64().expect("modifier type_id");
                }
                _ => return id,
            }
        }
    }

    fn is_composite(&self, id: u64) -> bool {
        matches!(self.get(id)["kind"].as_str(), Some("STRUCT" | "UNION"))
    }

    /// Returns the bit offset and type id of member `name` of `composite`,
    /// searching anonymous struct and union members as C does.
    fn find_member(&self, composite: u64, name: &str) -> Option<(u64, u64)> {
        for member in self.get(composite)["members"].as_array()? {
            let bits = member["bits_offset"].as_u64().expect("bits_offset");
            let type_id = member["type_id"].as_u64().expect("member type_id");
            if member["name"] == name {
                assert!(
                    member.get("bitfield_size").is_none(),
                    "{name} is a bitfield"
                );
                return Some((bits, type_id));
            }
            let inner = self.skip_modifiers(type_id);
            if member["name"] == "(anon)"
                && self.is_composite(inner)
                && let Some((inner_bits, found)) = self.find_member(inner, name)
            {
                return Some((bits + inner_bits, found));
            }
        }
        None
    }

    fn member_offset(&self, structure: &str, path: &[&str]) -> u32 {
        let ids = self.structs_named(structure);
        assert_eq!(
            ids.len(),
            1,
            "bpftool lists {} structs named {structure}",
            ids.len()
        );
        let mut composite = ids[0];
        let mut bits = 0;
        for name in path {
            let (member_bits, type_id) = self
                .find_member(composite, name)
                .unwrap_or_else(|| panic!("bpftool: {structure} has no member {name}"));
            bits += member_bits;
            composite = self.skip_modifiers(type_id);
        }
        assert_eq!(bits % 8, 0);
        u32::try_from(bits / 8).expect("offset fits in u32")
    }
}

#[test]
fn kernel_offsets_match_bpftool() {
    let check = "kernel_offsets_match_bpftool";
    let Some(btf) = load_kernel_btf(check) else {
        return;
    };
    let Some(bpftool) = find_tool("bpftool") else {
        report_skip(check, "bpftool is not installed (Debian package bpftool)");
        return;
    };
    let types = BpftoolTypes::load(&bpftool);
    let offsets = btf.exe_identity_offsets().expect("all members exist");
    for (structure, path, offset) in labelled(&offsets) {
        let expected = types.member_offset(structure, path);
        assert_eq!(offset, expected, "{structure}.{}", path.join("."));
    }

    // Compare the direct members of every uniquely named struct, which checks
    // the parser's handling of all kinds that come before them.
    let mut compared = 0;
    for (name, ids) in &types.structs_by_name {
        let [id] = ids.as_slice() else {
            continue;
        };
        if name == "(anon)" {
            continue;
        }
        let record = types.get(*id);
        let expected: Vec<(Option<String>, u64, u64)> = record["members"]
            .as_array()
            .expect("struct members")
            .iter()
            .map(|member| {
                let member_name = member["name"].as_str().filter(|text| *text != "(anon)");
                let bits = member["bits_offset"].as_u64().expect("bits_offset");
                let bitfield_size = member["bitfield_size"].as_u64().unwrap_or(0);
                (member_name.map(str::to_owned), bits, bitfield_size)
            })
            .collect();
        let actual: Vec<(Option<String>, u64, u64)> = btf
            .members(name)
            .expect("struct found")
            .into_iter()
            .map(|member| {
                let bits = u64::from(member.bit_offset);
                (member.name, bits, u64::from(member.bitfield_size))
            })
            .collect();
        assert_eq!(actual, expected, "members of struct {name}");
        let size = record["size"].as_u64().expect("struct size");
        let parsed_size = btf.struct_size(name).expect("struct found");
        assert_eq!(u64::from(parsed_size), size, "size of struct {name}");
        compared += 1;
    }
    let _ = writeln!(
        std::io::stderr(),
        "compared {compared} structs with bpftool"
    );
    assert!(compared > 1000, "only {compared} structs compared");
}

/// Returns the offset that `pahole -C structure` prints for a direct member,
/// from a line such as `struct super_block * mnt_sb; /* 8 8 */`.
fn pahole_offset(pahole: &Path, structure: &str, member: &str) -> u32 {
    // pahole 1.24 warns on stderr about BTF kinds newer than itself and
    // still prints the struct.
    let output = Command::new(pahole)
        .args(["-C", structure, SYS_FS_VMLINUX])
        .output()
        .expect("pahole runs");
    assert!(output.status.success(), "pahole -C {structure} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let declaration = format!(" {member};");
    let line = stdout
        .lines()
        .find(|line| line.contains(&declaration))
        .unwrap_or_else(|| {
            panic!("pahole output for {structure} has no member {member}:\n{stdout}")
        });
    let comment = line.split("/*").nth(1).expect("offset comment");
    comment
        .split_whitespace()
        .next()
        .and_then(|offset| offset.parse().ok())
        .unwrap_or_else(|| panic!("no offset in pahole line {line:?}"))
}

#[test]
fn kernel_offsets_match_pahole() {
    let check = "kernel_offsets_match_pahole";
    let Some(btf) = load_kernel_btf(check) else {
        return;
    };
    let Some(pahole) = find_tool("pahole") else {
        report_skip(check, "pahole is not installed (Debian package pahole)");
        return;
    };
    let offsets = btf.exe_identity_offsets().expect("all members exist");
    assert_eq!(
        offsets.vfsmount_sb,
        pahole_offset(&pahole, "vfsmount", "mnt_sb")
    );
    assert_eq!(offsets.task_mm, pahole_offset(&pahole, "task_struct", "mm"));
    assert_eq!(offsets.task_fs, pahole_offset(&pahole, "task_struct", "fs"));
    assert_eq!(
        offsets.sb_dev,
        pahole_offset(&pahole, "super_block", "s_dev")
    );
}

#[test]
fn lsm_offsets_match_bpftool() {
    let check = "lsm_offsets_match_bpftool";
    let Some(btf) = load_kernel_btf(check) else {
        return;
    };
    let Some(bpftool) = find_tool("bpftool") else {
        report_skip(check, "bpftool is not installed (Debian package bpftool)");
        return;
    };
    let types = BpftoolTypes::load(&bpftool);
    let offsets = btf.lsm_offsets().expect("all members exist");
    assert_eq!(offsets.valid, 1);
    let members: [(&str, &[&str], u32); 22] = [
        ("file", &["f_path", "mnt"], offsets.file_path_mnt),
        ("file", &["f_path", "dentry"], offsets.file_path_dentry),
        ("file", &["f_mode"], offsets.file_mode),
        ("file", &["f_flags"], offsets.file_flags),
        ("path", &["mnt"], offsets.path_mnt),
        ("path", &["dentry"], offsets.path_dentry),
        ("mount", &["mnt"], offsets.mount_mnt),
        ("mount", &["mnt_id"], offsets.mount_id),
        ("mount", &["mnt_parent"], offsets.mount_parent),
        ("mount", &["mnt_mountpoint"], offsets.mount_mountpoint),
        ("vfsmount", &["mnt_root"], offsets.vfsmount_root),
        ("dentry", &["d_parent"], offsets.dentry_parent),
        ("dentry", &["d_name", "len"], offsets.dentry_name_len),
        ("dentry", &["d_name", "name"], offsets.dentry_name),
        ("dentry", &["d_inode"], offsets.dentry_inode),
        ("inode", &["i_mode"], offsets.inode_mode),
        ("inode", &["i_nlink"], offsets.inode_nlink),
        ("inode", &["i_ino"], offsets.inode_ino),
        ("inode", &["i_sb"], offsets.inode_sb),
        ("super_block", &["s_dev"], offsets.sb_dev),
        ("linux_binprm", &["file"], offsets.bprm_file),
        ("linux_binprm", &["filename"], offsets.bprm_filename),
    ];
    for (structure, path, offset) in members {
        let expected = types.member_offset(structure, path);
        assert_eq!(offset, expected, "{structure}.{}", path.join("."));
    }
}
