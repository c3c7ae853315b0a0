//! `cargo fuzz run decode`: the frame decoder never panics, and whatever it
//! accepts re-encodes to the same bytes.
#![no_main]

use jobmill::protocol::{decode, encode, Decoded, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Decoded::Frame { frame, len }) = decode(rest, 1 << 20) {
        if let Frame::Batch(b) = frame {
            assert_eq!(b.iter().count(), b.len());
        }
        let mut again = Vec::new();
        encode(&mut again, &frame, 1 << 20).expect("a decoded frame fits its cap");
        assert_eq!(&again[..], &rest[..len]);
        rest = &rest[len..];
    }
});
