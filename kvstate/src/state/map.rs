//! The key space: a map from keys to values, compact in memory and cheap to clone.
//!
//! Keys are spread over `SHARDS` shards by a fixed hash (`shard_of`, FNV-1a: the same on every
//! replica and platform). A shard is a `BTreeMap` behind an `Arc`, and every value is behind an
//! `Arc` too, so:
//! - cloning the map (a snapshot's frozen view) copies `SHARDS` pointers;
//! - the first write to a shard still shared with a clone copies that shard's tree (about 50
//!   bytes per key: keys and value pointers, never the value bytes), `Arc::make_mut`;
//! - a snapshot writer that drops each shard once written (`into_shards`) stops the copying
//!   of the shards it has done.
//!
//! Memory per key (measured, `kvnode/examples/state_memory.rs`): the value's bytes, 48 bytes of
//! `Arc<Value>`, and 32 bytes of tree slot (a key of up to `KEY_INLINE_BYTES_MAX` bytes is
//! stored in the slot itself) divided by how full the tree's nodes are.
//!
//! Order: keys are ordered within a shard, and shards by their number; `iter` yields that
//! order (the snapshot's order). No operation needs the keys' global order.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::ops::Value;

/// Shards of the key space (a power of two). More shards make each copy-on-write of a shard
/// shorter (a pause of the apply loop) at a fixed cost of one pointer per shard in every clone.
pub const SHARDS: usize = 4096;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// Keys up to this many bytes live inside the tree's slot, without an allocation of their own.
pub const KEY_INLINE_BYTES_MAX: usize = 22;

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

/// A key, inline up to `KEY_INLINE_BYTES_MAX` bytes (24 bytes in all), else on the heap.
/// Compares, orders and borrows as its bytes.
#[derive(Clone)]
pub enum Key {
    Inline {
        len: u8,
        bytes: [u8; KEY_INLINE_BYTES_MAX],
    },
    Heap(Box<[u8]>),
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
            Key::Heap(key.into())
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

pub type Shard = BTreeMap<Key, Arc<Value>>;

/// The map. Shards are allocated on the first insert (an empty map owns nothing).
#[derive(Clone, Default)]
pub struct KeyMap {
    /// Empty, or `SHARDS` entries; `None` for a shard that never held a key.
    shards: Vec<Option<Arc<Shard>>>,
    len: usize,
}

impl KeyMap {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        let shard = self.shards.get(shard_of(key))?.as_ref()?;
        shard.get(key).map(|value| &**value)
    }

    /// The value of `key` as it is held, to share it (`restore_from_base`).
    pub fn get_shared(&self, key: &[u8]) -> Option<&Arc<Value>> {
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
    pub fn insert(&mut self, key: &[u8], value: Arc<Value>) -> Option<Arc<Value>> {
        let previous = self.shard_mut(key).insert(Key::new(key), value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Arc<Value>> {
        let slot = self.shards.get_mut(shard_of(key))?.as_mut()?;
        if !slot.contains_key(key) {
            return None;
        }
        let removed = unshare(slot).remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// The value of `key` for changing in place (copied first if a clone still shares it).
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Value> {
        let slot = self.shards.get_mut(shard_of(key))?.as_mut()?;
        if !slot.contains_key(key) {
            return None;
        }
        unshare(slot).get_mut(key).map(Arc::make_mut)
    }

    /// Every pair, shard by shard, each shard in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Value)> {
        (self.shards.iter().flatten())
            .flat_map(|shard| shard.iter().map(|(key, value)| (key.as_bytes(), &**value)))
    }

    /// The shards in order, for a writer that drops each one once written.
    pub fn into_shards(self) -> impl Iterator<Item = Arc<Shard>> {
        self.shards.into_iter().flatten()
    }

    /// A map from whole shards (`restore`): `shards[i]` must hold only keys of shard `i`.
    pub fn from_shards(shards: Vec<Option<Arc<Shard>>>) -> KeyMap {
        debug_assert!(shards.is_empty() || shards.len() == SHARDS);
        let len = (shards.iter().flatten()).map(|shard| shard.len()).sum();
        KeyMap { shards, len }
    }
}

/// `Arc::make_mut` for a shard, but a shared shard is copied into a tree built bottom up from its
/// sorted pairs: full nodes, where inserts in random order leave them about 60% full (measured:
/// 385 bytes a key of 256-byte values after a fill, 359 after the rebuild of every shard). A
/// snapshot's clone thus also packs every shard written after it. Same cost as a clone: one pass
/// over the shard, one copy of each key and one reference count increment per value.
fn unshare(shard: &mut Arc<Shard>) -> &mut Shard {
    if Arc::get_mut(shard).is_none() {
        let packed: Shard = (shard.iter())
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
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
    use bytes::Bytes;

    fn value(text: &str) -> Arc<Value> {
        Arc::new(Value::Bytes(Bytes::from(text.to_string())))
    }

    #[test]
    fn a_key_is_24_bytes_and_inline_up_to_the_limit() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
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
        if let Some(Value::Bytes(bytes)) = map.get_mut(b"k3") {
            *bytes = Bytes::from_static(b"changed");
        }
        assert_eq!(frozen.len(), 1000);
        assert_eq!(map.len(), 1000);
        assert_eq!(frozen.get(b"k1"), Some(&*value("old")));
        assert_eq!(frozen.get(b"k2"), Some(&*value("old")));
        assert_eq!(frozen.get(b"k3"), Some(&*value("old")));
        assert_eq!(frozen.get(b"added"), None);
        assert_eq!(map.get(b"k1"), Some(&*value("new")));
        assert_eq!(map.get(b"k2"), None);
        assert_eq!(map.get(b"k3"), Some(&*value("changed")));
        assert_ne!(map, frozen);
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
