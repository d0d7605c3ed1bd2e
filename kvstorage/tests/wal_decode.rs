//! The record decoder never panics, whatever the bytes, and never accepts a damaged record.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use kvraft::message::{Entry, EntryKind};
use kvstorage::wal::record::{self, Decoded, Record};
use proptest::prelude::*;

const RECORD_BYTES_MAX: usize = 1 << 16;

proptest! {
    #[test]
    fn wal_decoder_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(Decoded::Record { record_bytes, .. }) = record::decode(&bytes, RECORD_BYTES_MAX) {
            prop_assert!(record_bytes <= bytes.len());
        }
        let _ = record::check_sequence(&bytes, RECORD_BYTES_MAX);
    }

    #[test]
    fn wal_decoder_rejects_any_single_bit_flip_or_cut(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        index in 1u64..u64::MAX,
        term in any::<u64>(),
        flip in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let entry = Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(payload) };
        let mut encoded = Vec::new();
        record::encode(&Record::Entry(entry.clone()), &mut encoded);
        let decoded = record::decode(&encoded, RECORD_BYTES_MAX).unwrap();
        let record_bytes = encoded.len();
        let expected = Decoded::Record { record: Record::Entry(entry), record_bytes };
        prop_assert_eq!(decoded, expected);

        let bit = flip.index(encoded.len() * 8);
        let mut flipped = encoded.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let decoded = record::decode(&flipped, RECORD_BYTES_MAX);
        prop_assert!(!matches!(decoded, Ok(Decoded::Record { .. })), "{:?}", decoded);

        let cut = cut.index(encoded.len());
        let decoded = record::decode(&encoded[..cut], RECORD_BYTES_MAX);
        prop_assert!(!matches!(decoded, Ok(Decoded::Record { .. })), "{:?}", decoded);
    }
}
