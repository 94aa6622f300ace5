//! The delta builder reads ext4 images to pair each changed file with its old version; those
//! images come from outside (a build system, another team's rootfs), so whatever bytes they
//! hold, listing their files must end without a panic or an endless walk, and every extent it
//! reports must lie inside the image.
#![no_main]

use abup::bundle::delta::ext4;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|image: &[u8]| {
    let block_size = ext4::block_size(image);
    if let Some(files) = ext4::files(image) {
        assert!(block_size.is_some(), "files listed without a superblock");
        for f in &files {
            for e in &f.extents {
                let end = e.offset.checked_add(e.len);
                assert!(
                    end.is_some_and(|end| end <= image.len() as u64),
                    "{}: extent {e:?} outside the {}-byte image",
                    f.path,
                    image.len()
                );
            }
        }
    }
});
