//! A writer for the cpio `newc` format (magic `070701`), the format the
//! kernel unpacks an initramfs from.
//!
//! Every entry is owned by root and has a modification time of 0. Entries
//! are written in the order they were added, so parents must come first.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes `newc` entries to `output`, numbering inodes from 1.
pub struct Writer<W: Write> {
    output: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(output: W) -> Self {
        Self {
            output,
            written: 0,
            next_inode: 1,
        }
    }

    pub fn directory(&mut self, path: &str, permissions: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | permissions, 2, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, permissions: u32, contents: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | permissions, 1, (0, 0), contents)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node with the given major and minor numbers.
    pub fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        device: (u32, u32),
    ) -> io::Result<()> {
        self.entry(path, S_IFCHR | permissions, 1, device, b"")
    }

    /// Writes the trailer entry and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, (0, 0), b"")?;
        Ok(self.output)
    }

    /// Writes one entry. `path` is relative to the archive's root, without
    /// a leading slash.
    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        links: u32,
        device: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::other(format!("{path} is larger than the 4 GiB cpio allows"))
        })?;
        let name_size =
            u32::try_from(path.len() + 1).map_err(|_| io::Error::other("path too long"))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let fields = [
            inode, mode, 0, 0, links, 0, size, 0, 0, device.0, device.1, name_size, 0,
        ];
        let mut header = Vec::with_capacity(110 + path.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(path.as_bytes());
        header.push(0);
        self.write_padded(&header)?;
        self.write_padded(data)
    }

    /// Writes `bytes`, then zeros up to the next multiple of 4 bytes of the
    /// whole archive, as `newc` aligns both names and file data.
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.output.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let padding = (4 - self.written % 4) % 4;
        self.output.write_all(&[0u8; 3][..padding as usize])?;
        self.written += padding;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Writer;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut writer = Writer::new(Vec::new());
        writer.directory("/etc", 0o755).unwrap();
        writer.file("etc/hostname", 0o644, b"guest\n").unwrap();
        let archive = writer.finish().unwrap();

        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        // The header of the first entry is followed by its name, "etc".
        assert_eq!(&archive[110..114], b"etc\0");
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("etc/hostname\0"));
        assert!(text.contains("guest\n"));
        assert!(text.contains("TRAILER!!!\0"));
        // Mode of the file entry: a regular file with 0644.
        assert!(text.contains("000081a4"));
    }
}
