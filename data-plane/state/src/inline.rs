//! Small byte strings stored inline: the memory backend keeps keys and small values inside the hash
//! table's slots, so a lookup touches one slot instead of chasing two heap pointers (a key allocation
//! and a value allocation), which is what random access over 100k+ keys pays for.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

pub(crate) const KEY_INLINE: usize = 30;
const VALUE_INLINE: usize = 22;

/// A map key: up to 30 bytes inline, longer ones on the heap. Hashes and compares like `[u8]`, so maps
/// are looked up with a plain `&[u8]`.
#[derive(Clone)]
pub enum InlineKey {
    Inline { len: u8, data: [u8; KEY_INLINE] },
    Heap(Box<[u8]>),
}

/// `dst[..src.len()] = src` for `src.len() <= 30` with two fixed-size (overlapping) moves. Keys are
/// built on every state access; a variable-length `copy_from_slice` is a libc `memcpy` call, which
/// profiles showed costing more than the lookups around it (W2: ~19 % of the run).
#[inline]
fn copy_short(dst: &mut [u8; KEY_INLINE], src: &[u8]) {
    let n = src.len();
    if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..n].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..n].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..n].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

impl InlineKey {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= KEY_INLINE {
            let mut data = [0u8; KEY_INLINE];
            copy_short(&mut data, bytes);
            InlineKey::Inline {
                len: bytes.len() as u8,
                data,
            }
        } else {
            InlineKey::Heap(bytes.into())
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            InlineKey::Inline { len, data } => &data[..usize::from(*len)],
            InlineKey::Heap(b) => b,
        }
    }
}

impl InlineKey {
    /// Orders like `self.as_slice().cmp(other.as_slice())` without a `memcmp` call per comparison
    /// (sorting a firing window's timers was 7 % of W2): inline bytes are zero-padded, so comparing
    /// the padded arrays, then the lengths, gives the order of the slices.
    #[inline]
    pub fn cmp_bytes(&self, other: &Self) -> Ordering {
        match (self, other) {
            (InlineKey::Inline { len: a, data: x }, InlineKey::Inline { len: b, data: y }) => {
                words(x).cmp(&words(y)).then(a.cmp(b))
            }
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

/// Inline bytes as two big-endian integers, which order like the bytes.
#[inline]
fn words(data: &[u8; KEY_INLINE]) -> (u128, u128) {
    let mut low = [0u8; 16];
    low[..KEY_INLINE - 16].copy_from_slice(&data[16..]);
    let mut high = [0u8; 16];
    high.copy_from_slice(&data[..16]);
    (u128::from_be_bytes(high), u128::from_be_bytes(low))
}

impl Borrow<[u8]> for InlineKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for InlineKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must equal `<[u8] as Hash>::hash` for `Borrow<[u8]>` lookups to find the entry.
        self.as_slice().hash(state);
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for InlineKey {}

/// A stored value: up to 22 bytes inline (counters, sums, timestamps), longer ones in a `Vec` that is
/// updated in place.
#[derive(Clone)]
pub enum InlineValue {
    Inline { len: u8, data: [u8; VALUE_INLINE] },
    Heap(Vec<u8>),
}

impl InlineValue {
    pub fn new(bytes: &[u8]) -> Self {
        let mut v = InlineValue::Inline {
            len: 0,
            data: [0; VALUE_INLINE],
        };
        v.set(bytes);
        v
    }

    /// Takes `vec` as the value (inline when it fits, so the caller's buffer can be reused).
    pub fn from_vec(vec: &mut Vec<u8>) -> Self {
        if vec.len() <= VALUE_INLINE {
            Self::new(vec)
        } else {
            InlineValue::Heap(std::mem::take(vec))
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            InlineValue::Inline { len, data } => &data[..usize::from(*len)],
            InlineValue::Heap(v) => v,
        }
    }

    #[inline]
    pub fn set(&mut self, bytes: &[u8]) {
        match self {
            InlineValue::Heap(v) => {
                v.clear();
                v.extend_from_slice(bytes);
            }
            InlineValue::Inline { len, data } if bytes.len() <= VALUE_INLINE => {
                data[..bytes.len()].copy_from_slice(bytes);
                *len = bytes.len() as u8;
            }
            InlineValue::Inline { .. } => *self = InlineValue::Heap(bytes.to_vec()),
        }
    }

    /// Runs a `value_update` closure on the value: a heap value is edited in place; an inline one is
    /// copied into `scratch` and back (a few bytes, no allocation).
    #[inline]
    pub fn update(
        &mut self,
        scratch: &mut Vec<u8>,
        update: &mut dyn FnMut(&mut Vec<u8>, bool) -> bool,
    ) -> bool {
        match self {
            InlineValue::Heap(v) => update(v, true),
            InlineValue::Inline { len, data } => {
                scratch.clear();
                scratch.extend_from_slice(&data[..usize::from(*len)]);
                let keep = update(scratch, true);
                if keep {
                    self.set(scratch);
                }
                keep
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_find_by_slice_inline_and_on_the_heap() {
        let long = vec![3u8; 100];
        let mut m: HashMap<InlineKey, u32> = HashMap::new();
        m.insert(InlineKey::new(b"short"), 1);
        m.insert(InlineKey::new(&long), 2);
        m.insert(InlineKey::new(b""), 3);
        assert_eq!(m.get(&b"short"[..]), Some(&1));
        assert_eq!(m.get(long.as_slice()), Some(&2));
        assert_eq!(m.get(&b""[..]), Some(&3));
        assert_eq!(m.get(&b"shor"[..]), None);
    }

    #[test]
    fn keys_of_every_inline_length_keep_their_bytes() {
        let bytes: Vec<u8> = (1..=40).collect();
        for n in 0..=bytes.len() {
            let k = InlineKey::new(&bytes[..n]);
            assert_eq!(k.as_slice(), &bytes[..n], "length {n}");
            assert_eq!(matches!(k, InlineKey::Inline { .. }), n <= KEY_INLINE);
        }
    }

    #[test]
    fn keys_order_like_their_bytes() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![0, 1],
            vec![255; 30],
            vec![255; 31],
            vec![255; 29],
        ];
        for n in [14, 15, 16, 17, 29, 30, 31, 40] {
            let mut k: Vec<u8> = (0..n as u8).collect();
            keys.push(k.clone());
            k[n - 1] = 0;
            keys.push(k.clone());
            k.push(0);
            keys.push(k);
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    InlineKey::new(a).cmp_bytes(&InlineKey::new(b)),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn values_move_between_inline_and_heap() {
        let mut v = InlineValue::new(b"abc");
        assert!(matches!(v, InlineValue::Inline { .. }));
        v.set(&[1; 40]);
        assert_eq!(v.as_slice(), &[1; 40]);
        v.set(b"x");
        assert_eq!(v.as_slice(), b"x");
        let mut scratch = Vec::new();
        let mut v = InlineValue::new(&5u64.to_le_bytes());
        assert!(v.update(&mut scratch, &mut |b, present| {
            assert!(present);
            b.extend_from_slice(&[9; 30]);
            true
        }));
        assert_eq!(v.as_slice().len(), 38);
        let mut big = vec![7u8; 50];
        assert_eq!(InlineValue::from_vec(&mut big).as_slice(), &[7u8; 50]);
        assert!(big.is_empty());
    }
}
