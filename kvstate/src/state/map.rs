//! The key space: a map from keys to values, compact in memory and cheap to clone.
//!
//! Keys are spread over `SHARDS` shards by a fixed hash (`shard_of`, FNV-1a: the same on every
//! replica and platform). A shard is a `BTreeMap` behind an `Arc`, and every value is a
//! `StoredValue` (one pointer to a reference-counted body), so:
//! - cloning the map (a snapshot's frozen view) copies `SHARDS` pointers;
//! - the first write to a shard still shared with a clone copies that shard's tree (about 33
//!   bytes per key, measured: keys and value pointers, never the value bytes), `unshare`;
//! - a snapshot writer that drops each shard once written (`into_shards`) stops the copying
//!   of the shards it has done.
//!
//! Memory per key (measured with the node's allocator, mimalloc, `kvnode/examples/state_memory.rs`,
//! 2M keys of 9 bytes with 256-byte values: 323 bytes a key after a fill through `apply`, 321
//! after a restore; it was 385 and 357 with `Arc<Value>`, 24-byte keys and no packing, 342
//! and 322 without packing): the value's bytes in one allocation of their exact size, a
//! 32-byte body (`StoredValue`: reference counts and the bytes' pointer and length), and a
//! 24-byte tree slot (a key of up to `KEY_INLINE_BYTES_MAX` bytes is stored in the slot itself,
//! and the body's pointer) divided by how full the tree's nodes are: a leaf is 280 bytes for 11
//! slots (320 in mimalloc's size classes). Inserts leave leaves 55% (ascending keys) to 70%
//! (random keys) full; shards are packed (full nodes) as the map grows
//! (`pack_after_insert`), when a snapshot's clone makes a write copy one (`unshare`) and when
//! a snapshot is restored. mimalloc rounds every allocation of up to 64 bytes to a multiple of
//! 16, so a body without the weak count (24 bytes, `triomphe::Arc`) would cost the same 32.
//!
//! Order: keys are ordered within a shard, and shards by their number; `iter` yields that
//! order (the snapshot's order). No operation needs the keys' global order.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::ops::Value;

/// Shards of the key space (a power of two). More shards make each copy-on-write of a shard
/// shorter (a pause of the apply loop) at a fixed cost of one pointer per shard in every clone.
pub const SHARDS: usize = 4096;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// Keys up to this many bytes live inside the tree's slot, without an allocation of their own.
/// 14 makes a `Key` 16 bytes, so that a tree node of 11 slots (key and value pointer) fits
/// mimalloc's 320-byte size class (384 with 24-byte keys).
pub const KEY_INLINE_BYTES_MAX: usize = 14;

/// The shard of a key: the top bits of the key's 64-bit FNV-1a hash after MurmurHash3's
/// finalizer (FNV's own top bits spread short keys like `k123` badly). Part of the snapshot
/// format (pairs are written shard by shard), so it must never change within a format version.
pub fn shard_of(key: &[u8]) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash >> (64 - SHARD_BITS)) as usize
}

/// A key, inline up to `KEY_INLINE_BYTES_MAX` bytes (16 bytes in all), else on the heap (a
/// thin pointer to the boxed bytes, so that the enum stays 16 bytes). Compares, orders and
/// borrows as its bytes.
#[derive(Clone)]
pub enum Key {
    Inline {
        len: u8,
        bytes: [u8; KEY_INLINE_BYTES_MAX],
    },
    #[allow(clippy::box_collection)]
    Heap(Box<Box<[u8]>>),
}

impl Key {
    pub fn new(key: &[u8]) -> Key {
        if key.len() <= KEY_INLINE_BYTES_MAX {
            let mut bytes = [0; KEY_INLINE_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(Box::new(key.into()))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

/// A value as the map holds it: one pointer (8 bytes in the tree's slot) to a
/// reference-counted body, 32 bytes with the counts: a plain value's bytes in one allocation of
/// their exact size (not a `Bytes`, whose shared header and spare capacity would cost more), or
/// a list. Cloning shares the body (a snapshot's clone, a restore from a base); a list is
/// copied on its first change while shared (`list_mut`). Compares as the `Value` it holds and
/// serializes exactly as that `Value` does (the snapshot format).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredValue(Arc<Body>);

#[derive(Clone, PartialEq, Eq)]
enum Body {
    Bytes(Box<[u8]>),
    /// Boxed, so that `Body` is 16 bytes: the size of the pointer and length of `Bytes`.
    #[allow(clippy::box_collection)]
    List(Box<Vec<Bytes>>),
}

impl StoredValue {
    /// The value, with a plain value's bytes copied into an allocation of their exact size.
    pub fn new(value: Value) -> StoredValue {
        StoredValue::from(&value)
    }

    /// A plain value holding a copy of `bytes`.
    pub fn bytes(bytes: &[u8]) -> StoredValue {
        StoredValue(Arc::new(Body::Bytes(bytes.into())))
    }

    /// A list of `elements`.
    pub fn list(elements: Vec<Bytes>) -> StoredValue {
        StoredValue(Arc::new(Body::List(Box::new(elements))))
    }

    /// The bytes of a plain value; `None` for a list.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &*self.0 {
            Body::Bytes(bytes) => Some(bytes),
            Body::List(_) => None,
        }
    }

    /// The elements of a list; `None` for a plain value.
    pub fn as_list(&self) -> Option<&[Bytes]> {
        match &*self.0 {
            Body::Bytes(_) => None,
            Body::List(elements) => Some(elements),
        }
    }

    /// The elements of a list for changing in place, copied first if a clone shares them;
    /// `None` (and nothing copied) for a plain value.
    pub fn list_mut(&mut self) -> Option<&mut Vec<Bytes>> {
        self.as_list()?;
        match Arc::make_mut(&mut self.0) {
            Body::List(elements) => Some(elements),
            Body::Bytes(_) => None,
        }
    }

    /// The value as operations return it. A plain value's `Bytes` shares this body's
    /// allocation (no copy of the bytes); a list's elements are shared too.
    pub fn to_value(&self) -> Value {
        match &*self.0 {
            Body::Bytes(_) => Value::Bytes(Bytes::from_owner(SharedBytes(Arc::clone(&self.0)))),
            Body::List(elements) => Value::List(Vec::clone(elements)),
        }
    }

    /// Whether this holds `value`.
    pub fn holds(&self, value: &Value) -> bool {
        match (&*self.0, value) {
            (Body::Bytes(held), Value::Bytes(bytes)) => **held == **bytes,
            (Body::List(held), Value::List(elements)) => **held == *elements,
            _ => false,
        }
    }

    /// Whether both share one body (a clone of one another).
    pub fn ptr_eq(a: &StoredValue, b: &StoredValue) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl From<&Value> for StoredValue {
    fn from(value: &Value) -> StoredValue {
        match value {
            Value::Bytes(bytes) => StoredValue::bytes(bytes),
            Value::List(elements) => StoredValue::list(elements.clone()),
        }
    }
}

/// A plain value's body as the owner of a `Bytes` (`StoredValue::to_value`).
struct SharedBytes(Arc<Body>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        match &*self.0 {
            Body::Bytes(bytes) => bytes,
            Body::List(_) => &[],
        }
    }
}

/// As `Value`'s derived `Serialize`: variant 0 `Bytes` with the bytes, or variant 1 `List`
/// with the elements.
impl Serialize for StoredValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.0 {
            Body::Bytes(bytes) => serializer.serialize_newtype_variant(
                "Value",
                0,
                "Bytes",
                serde_bytes::Bytes::new(bytes),
            ),
            Body::List(elements) => {
                serializer.serialize_newtype_variant("Value", 1, "List", &**elements)
            }
        }
    }
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_value(), f)
    }
}

pub type Shard = BTreeMap<Key, StoredValue>;

/// The map. Shards are allocated on the first insert (an empty map owns nothing).
#[derive(Clone, Default)]
pub struct KeyMap {
    /// Empty, or `SHARDS` entries; `None` for a shard that never held a key.
    shards: Vec<Option<Arc<Shard>>>,
    len: usize,
    /// New keys since the last shard was packed (`pack_after_insert`).
    inserts_since_pack: usize,
    /// The shard packed next.
    pack_cursor: usize,
}

/// A shard is packed again once it has grown by about 1 / `PACK_GROWTH_DIVISOR` since it was
/// last packed: one shard in turn every `len / SHARDS / PACK_GROWTH_DIVISOR` new keys (at
/// least every new key), which moves about `PACK_GROWTH_DIVISOR` pairs per new key.
const PACK_GROWTH_DIVISOR: usize = 8;

impl KeyMap {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&StoredValue> {
        let shard = self.shards.get(shard_of(key))?.as_ref()?;
        shard.get(key)
    }

    /// The shard of `key`, unshared (copied if a clone still holds it).
    fn shard_mut(&mut self, key: &[u8]) -> &mut Shard {
        if self.shards.is_empty() {
            self.shards.resize(SHARDS, None);
        }
        let shard = self.shards[shard_of(key)].get_or_insert_with(Default::default);
        unshare(shard)
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&mut self, key: &[u8], value: StoredValue) -> Option<StoredValue> {
        let previous = self.shard_mut(key).insert(Key::new(key), value);
        if previous.is_none() {
            self.len += 1;
            self.pack_after_insert();
        }
        previous
    }

    /// Inserts in random order leave a tree's nodes about 65% full, packed ones are full: packs
    /// the shards in turn as the map grows (see `PACK_GROWTH_DIVISOR`), so that a map filled by
    /// inserts holds its keys in mostly full nodes. A shard a clone shares is left alone (its
    /// first write copies it packed, `unshare`). Changes no content: the same on every replica.
    fn pack_after_insert(&mut self) {
        self.inserts_since_pack += 1;
        if self.inserts_since_pack < self.len / SHARDS / PACK_GROWTH_DIVISOR {
            return;
        }
        self.inserts_since_pack = 0;
        let cursor = self.pack_cursor;
        self.pack_cursor = (cursor + 1) % SHARDS;
        let Some(tree) = self.shards.get_mut(cursor).and_then(Option::as_mut) else {
            return;
        };
        if let Some(tree) = Arc::get_mut(tree) {
            // `into_iter` yields the pairs in order; `collect` builds full nodes bottom up.
            *tree = std::mem::take(tree).into_iter().collect();
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<StoredValue> {
        let slot = self.shards.get_mut(shard_of(key))?.as_mut()?;
        if !slot.contains_key(key) {
            return None;
        }
        let removed = unshare(slot).remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// The list of `key` for changing in place (the shard and the list copied first if a clone
    /// still shares them); `None` if `key` is absent or holds plain bytes.
    pub fn list_mut(&mut self, key: &[u8]) -> Option<&mut Vec<Bytes>> {
        let slot = self.shards.get_mut(shard_of(key))?.as_mut()?;
        slot.get(key)?.as_list()?;
        unshare(slot).get_mut(key)?.list_mut()
    }

    /// Every pair, shard by shard, each shard in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &StoredValue)> {
        (self.shards.iter().flatten())
            .flat_map(|shard| shard.iter().map(|(key, value)| (key.as_bytes(), value)))
    }

    /// The shards in order, for a writer that drops each one once written.
    pub fn into_shards(self) -> impl Iterator<Item = Arc<Shard>> {
        self.shards.into_iter().flatten()
    }

    /// A map from whole shards (`restore`): `shards[i]` must hold only keys of shard `i`.
    pub fn from_shards(shards: Vec<Option<Arc<Shard>>>) -> KeyMap {
        debug_assert!(shards.is_empty() || shards.len() == SHARDS);
        let len = (shards.iter().flatten()).map(|shard| shard.len()).sum();
        KeyMap {
            shards,
            len,
            ..KeyMap::default()
        }
    }
}

/// `Arc::make_mut` for a shard, but a shared shard is copied into a tree built bottom up from its
/// sorted pairs: full nodes, where inserts leave them 55% to 70% full (measured: 342 bytes a
/// key of 256-byte values after a fill without packing, 322 after a restore, whose shards are
/// built this way). A snapshot's clone thus also packs every shard written after it. Same cost
/// as a clone: one pass over the shard, one copy of each key and one reference count increment
/// per value.
fn unshare(shard: &mut Arc<Shard>) -> &mut Shard {
    if Arc::get_mut(shard).is_none() {
        let packed: Shard = (shard.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *shard = Arc::new(packed);
    }
    Arc::make_mut(shard)
}

impl PartialEq for KeyMap {
    fn eq(&self, other: &KeyMap) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for KeyMap {}

impl fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> StoredValue {
        StoredValue::bytes(text.as_bytes())
    }

    fn plain(text: &str) -> Value {
        Value::Bytes(Bytes::from(text.to_string()))
    }

    fn list(elements: &[&str]) -> Value {
        Value::List(
            elements
                .iter()
                .map(|e| Bytes::from(e.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_key_is_16_bytes_and_inline_up_to_the_limit() {
        assert_eq!(std::mem::size_of::<Key>(), 16);
        let short = [7u8; KEY_INLINE_BYTES_MAX];
        assert!(matches!(Key::new(&short), Key::Inline { .. }));
        assert!(matches!(
            Key::new(&[7u8; KEY_INLINE_BYTES_MAX + 1]),
            Key::Heap(_)
        ));
        assert_eq!(Key::new(&short).as_bytes(), short);
        assert_eq!(Key::new(b"").as_bytes(), b"");
        // Order is the bytes' order, whatever the representation.
        let long = [7u8; KEY_INLINE_BYTES_MAX + 1];
        assert!(Key::new(&short) < Key::new(&long));
        assert!(Key::new(b"b") > Key::new(&long));
        assert_eq!(Key::new(&long).as_bytes(), long);
        assert_eq!(Key::new(&long), Key::new(&long.clone()));
        assert_ne!(Key::new(&long), Key::new(&long[1..]));
    }

    #[test]
    fn a_stored_value_is_one_pointer_to_a_32_byte_body() {
        // The figures of the memory per key in this module's header.
        assert_eq!(std::mem::size_of::<StoredValue>(), 8);
        assert_eq!(std::mem::size_of::<Body>(), 16);
        assert_eq!(std::mem::size_of::<(Key, StoredValue)>(), 24);
    }

    #[test]
    fn a_stored_value_holds_and_returns_its_value() {
        for original in [plain(""), plain("abc"), list(&[]), list(&["a", "", "bc"])] {
            let stored = StoredValue::new(original.clone());
            assert_eq!(stored.to_value(), original);
            assert!(stored.holds(&original));
            assert_eq!(StoredValue::from(&original), stored);
            assert_eq!(format!("{stored:?}"), format!("{original:?}"));
        }
        let (bytes, elements) = (value("abc"), StoredValue::new(list(&["abc"])));
        assert_eq!(bytes.as_bytes(), Some(&b"abc"[..]));
        assert_eq!(bytes.as_list(), None);
        assert_eq!(elements.as_bytes(), None);
        assert_eq!(elements.as_list(), Some(&[Bytes::from("abc")][..]));
        // A plain value and a list of the same bytes differ, and so do different bytes.
        assert_ne!(bytes, elements);
        assert!(!bytes.holds(&list(&["abc"])) && !elements.holds(&plain("abc")));
        assert!(!bytes.holds(&plain("abd")) && bytes != value("abd"));
        assert!(!elements.holds(&list(&["abc", "d"])));
    }

    #[test]
    fn a_stored_value_serializes_as_its_value() {
        let config = bincode::config::standard();
        for original in [plain(""), plain("abc"), list(&[]), list(&["a", "", "bc"])] {
            let stored = StoredValue::new(original.clone());
            let encoded = bincode::serde::encode_to_vec(&stored, config).unwrap();
            assert_eq!(
                encoded,
                bincode::serde::encode_to_vec(&original, config).unwrap()
            );
            let (decoded, _): (Value, usize) =
                bincode::serde::decode_from_slice(&encoded, config).unwrap();
            assert_eq!(decoded, original);
        }
    }

    #[test]
    fn a_clone_shares_the_body_and_a_shared_list_is_copied_on_change() {
        let plain_value = value("abc");
        let shared = plain_value.clone();
        assert!(StoredValue::ptr_eq(&plain_value, &shared));
        assert!(!StoredValue::ptr_eq(&plain_value, &value("abc")));
        // A plain value has no list to change, and is not copied by asking.
        let mut asked = plain_value.clone();
        assert_eq!(asked.list_mut(), None);
        assert!(StoredValue::ptr_eq(&asked, &plain_value));
        // The bytes a read returns are the stored ones, not a copy.
        let Value::Bytes(read) = plain_value.to_value() else {
            panic!("a plain value reads as bytes");
        };
        assert_eq!(
            Some(read.as_ptr()),
            plain_value.as_bytes().map(<[u8]>::as_ptr)
        );
        drop(plain_value);
        drop(shared);
        assert_eq!(read, "abc");

        let frozen = StoredValue::new(list(&["a"]));
        let mut live = frozen.clone();
        live.list_mut().unwrap().push(Bytes::from("b"));
        assert_eq!(frozen.to_value(), list(&["a"]));
        assert_eq!(live.to_value(), list(&["a", "b"]));
        assert!(!StoredValue::ptr_eq(&frozen, &live));
        // Unshared, a list changes in place.
        let before = live.clone();
        drop(before);
        let body = Arc::as_ptr(&live.0);
        live.list_mut().unwrap().push(Bytes::from("c"));
        assert_eq!(Arc::as_ptr(&live.0), body);
        assert_eq!(live.to_value(), list(&["a", "b", "c"]));
    }

    #[test]
    fn shards_spread_keys_and_are_fixed() {
        let mut counts = vec![0u32; SHARDS];
        for key in 0..(SHARDS as u64 * 64) {
            counts[shard_of(format!("k{key}").as_bytes())] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(min >= Some(&24) && max <= Some(&112), "{min:?} {max:?}");
        // The snapshot format depends on these values: a change of the hash is a new format.
        assert_eq!(
            [shard_of(b""), shard_of(b"k0"), shard_of(b"k1")],
            [3837, 84, 1186]
        );
    }

    #[test]
    fn a_clone_is_not_changed_by_writes_to_the_original() {
        let mut map = KeyMap::default();
        for key in 0..1000 {
            map.insert(format!("k{key}").as_bytes(), value("old"));
        }
        let frozen = map.clone();
        map.insert(b"k1", value("new"));
        map.remove(b"k2");
        map.insert(b"added", value("x"));
        map.insert(b"list", StoredValue::new(list(&["a"])));
        let mut frozen_list = map.clone();
        assert_eq!(map.list_mut(b"k3"), None, "k3 holds plain bytes");
        map.list_mut(b"list").unwrap().push(Bytes::from("b"));
        assert_eq!(frozen.len(), 1000);
        assert_eq!(map.len(), 1001);
        assert_eq!(frozen.get(b"k1"), Some(&value("old")));
        assert_eq!(frozen.get(b"k2"), Some(&value("old")));
        assert_eq!(frozen.get(b"k3"), Some(&value("old")));
        assert_eq!(frozen.get(b"added"), None);
        assert_eq!(map.get(b"k1"), Some(&value("new")));
        assert_eq!(map.get(b"k2"), None);
        assert_eq!(map.get(b"k3"), Some(&value("old")));
        assert_eq!(
            frozen_list.get(b"list").map(StoredValue::to_value),
            Some(list(&["a"]))
        );
        assert_eq!(
            map.get(b"list").map(StoredValue::to_value),
            Some(list(&["a", "b"]))
        );
        assert_ne!(map, frozen);
        // The clone's own writes do not reach the original either.
        frozen_list.list_mut(b"list").unwrap().clear();
        assert_eq!(
            map.get(b"list").map(StoredValue::to_value),
            Some(list(&["a", "b"]))
        );
    }

    #[test]
    fn packing_as_the_map_grows_keeps_every_pair_and_spares_a_clone() {
        let mut map = KeyMap::default();
        let mut model = std::collections::BTreeMap::new();
        let mut frozen = None;
        // Keys in a scattered order, enough for many packs of every shard.
        for i in 0..(SHARDS as u64 * 40) {
            let key = format!("k{}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_003);
            map.insert(key.as_bytes(), value(&key));
            model.insert(key.into_bytes(), ());
            if i == SHARDS as u64 * 20 {
                frozen = Some((map.clone(), model.clone()));
            }
        }
        let same = |map: &KeyMap, model: &std::collections::BTreeMap<Vec<u8>, ()>| {
            map.len() == model.len()
                && model
                    .keys()
                    .all(|key| map.get(key) == Some(&StoredValue::bytes(key)))
        };
        assert!(same(&map, &model));
        let (frozen, frozen_model) = frozen.unwrap();
        assert!(same(&frozen, &frozen_model));
        assert!(frozen.len() < map.len());
    }

    #[test]
    fn iter_is_by_shard_then_key() {
        let mut map = KeyMap::default();
        for key in 0..5000 {
            map.insert(format!("k{key}").as_bytes(), value("v"));
        }
        let order: Vec<(usize, Vec<u8>)> =
            map.iter().map(|(k, _)| (shard_of(k), k.to_vec())).collect();
        assert_eq!(order.len(), 5000);
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}
