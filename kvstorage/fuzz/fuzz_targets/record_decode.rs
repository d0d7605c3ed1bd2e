//! The WAL record decoder on arbitrary bytes: it must never panic, and whatever it accepts must
//! re-encode to the same bytes.
#![no_main]

use kvstorage::wal::record::{self, Decoded};
use libfuzzer_sys::fuzz_target;

const RECORD_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    let _ = record::check_sequence(bytes, RECORD_BYTES_MAX);
    if let Ok(Decoded::Record {
        record,
        record_bytes,
    }) = record::decode(bytes, RECORD_BYTES_MAX)
    {
        let mut encoded = Vec::new();
        record::encode(&record, &mut encoded);
        assert_eq!(encoded[..], bytes[..record_bytes]);
    }
});
