use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use crate::{EnvBlock, Error, MAX_BLOCK_SIZE};

/// Reads a whole block from offset 0, as GRUB does (the block is the whole file).
///
/// The size is checked against [`MAX_BLOCK_SIZE`] before anything is allocated, so a wrong
/// path (a disk, a huge log) fails fast instead of exhausting memory.
pub fn read_block<R: Read + Seek>(mut reader: R) -> Result<EnvBlock, Error> {
    let size = reader.seek(SeekFrom::End(0))?;
    let len = usize::try_from(size)
        .ok()
        .filter(|&len| len <= MAX_BLOCK_SIZE)
        .ok_or(Error::TooLarge {
            size,
            max: MAX_BLOCK_SIZE,
        })?;
    reader.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0; len];
    reader.read_exact(&mut buf)?;
    EnvBlock::from_bytes(buf)
}

/// Overwrites an existing block file in place and waits until the data is on the disk.
///
/// In place, never truncate-and-rewrite like `grub-editenv`: the file keeps its size and its
/// blocks, so GRUB's `save_env` (which writes through the file's block list) keeps working and
/// a power cut cannot leave an empty file. A file whose size differs is refused; only
/// [`create_block`] makes new files.
pub fn write_block(file: &File, block: &EnvBlock) -> Result<(), Error> {
    let mut writer = file;
    let size = writer.seek(SeekFrom::End(0))?;
    if size != block.size() as u64 {
        return Err(Error::SizeMismatch {
            expected: block.size(),
            found: size,
        });
    }
    writer.seek(SeekFrom::Start(0))?;
    writer.write_all(block.as_bytes())?;
    writer.flush()?;
    file.sync_data()?;
    Ok(())
}

/// Fills a new, empty file with a block and syncs it, data and size.
///
/// Every byte is written, so the file is never sparse (GRUB's `save_env` refuses sparse files).
/// For an atomic appearance, create the file under a temporary name, call this, then rename it
/// and sync the directory.
pub fn create_block(file: &File, block: &EnvBlock) -> Result<(), Error> {
    let mut writer = file;
    let size = writer.seek(SeekFrom::End(0))?;
    if size != 0 {
        return Err(Error::NotEmpty { size });
    }
    writer.write_all(block.as_bytes())?;
    writer.flush()?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn contents(mut file: &File) -> Vec<u8> {
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut buf).unwrap();
        buf
    }

    #[test]
    fn write_in_place_keeps_the_file_and_its_size() {
        let old = EnvBlock::new(512).unwrap();
        let file = file_with(old.as_bytes());
        let mut new = old.clone();
        new.set("A", "1").unwrap();
        write_block(&file, &new).unwrap();
        assert_eq!(contents(&file), new.as_bytes());
        assert_eq!(read_block(&file).unwrap(), new);
    }

    #[test]
    fn write_refuses_a_file_of_another_size() {
        let block = EnvBlock::new(512).unwrap();
        for existing in [&[][..], &[b'x'; 511], &[b'x'; 1024]] {
            let file = file_with(existing);
            assert!(matches!(
                write_block(&file, &block),
                Err(Error::SizeMismatch { expected: 512, .. })
            ));
            assert_eq!(contents(&file), existing);
        }
    }

    #[test]
    fn create_fills_an_empty_file_only() {
        let block = EnvBlock::new(512).unwrap();
        let file = tempfile::tempfile().unwrap();
        create_block(&file, &block).unwrap();
        assert_eq!(contents(&file), block.as_bytes());
        assert!(matches!(
            create_block(&file, &block),
            Err(Error::NotEmpty { size: 512 })
        ));
    }

    #[test]
    fn read_checks_the_size_before_allocating() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 40).unwrap();
        assert!(matches!(
            read_block(&file),
            Err(Error::TooLarge { size, .. }) if size == 1 << 40
        ));
        assert!(matches!(
            read_block(Cursor::new(vec![0u8; 512])),
            Err(Error::BadSignature { size: 512 })
        ));
        let block = EnvBlock::new(4097).unwrap();
        let mut cursor = Cursor::new(block.as_bytes().to_vec());
        cursor.set_position(100);
        assert_eq!(read_block(&mut cursor).unwrap(), block);
    }
}
