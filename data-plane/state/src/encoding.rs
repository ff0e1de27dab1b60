//! Byte layouts shared by the backends and the snapshot format: LEB128 varints, the `(key, namespace)`
//! composite and the framing of list items.

use crate::error::{Result, StateError};

#[inline]
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a varint at the front of `input`, returning it and the rest.
#[inline]
pub fn take_varint<'a>(input: &'a [u8], context: &'static str) -> Result<(u64, &'a [u8])> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, &input[i + 1..]));
        }
    }
    Err(StateError::corrupt(context, "truncated or overlong varint"))
}

/// Appends `bytes` with a varint length prefix.
#[inline]
pub fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Reads length-prefixed bytes at the front of `input`, returning them and the rest.
#[inline]
pub fn take_bytes<'a>(input: &'a [u8], context: &'static str) -> Result<(&'a [u8], &'a [u8])> {
    let (len, rest) = take_varint(input, context)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= rest.len())
        .ok_or_else(|| {
            StateError::corrupt(
                context,
                format!("length {len} exceeds the {} bytes left", rest.len()),
            )
        })?;
    Ok(rest.split_at(len))
}

/// `varint(key.len()) ‖ key ‖ namespace` into `buf` (cleared first): one allocation-free lookup key for
/// a `(key, namespace)` pair. The key length prefix keeps `("ab", "c")` apart from `("a", "bc")`.
#[inline]
pub fn composite_key(buf: &mut Vec<u8>, key: &[u8], namespace: &[u8]) {
    buf.clear();
    put_bytes(buf, key);
    buf.extend_from_slice(namespace);
}

/// Splits a [`composite_key`] into `(key, namespace)`.
#[inline]
pub fn split_composite(composite: &[u8]) -> Result<(&[u8], &[u8])> {
    take_bytes(composite, "(key, namespace) composite")
}

/// Appends one list item in the framing of list state (`varint(len) ‖ item`).
#[inline]
pub fn push_list_item(buf: &mut Vec<u8>, item: &[u8]) {
    put_bytes(buf, item);
}

/// The items of a list state: a validated run of framed items, iterated without copying.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListItems<'a> {
    framed: &'a [u8],
    len: usize,
}

impl<'a> ListItems<'a> {
    /// Checks the framing of `framed` (a concatenation of [`push_list_item`] outputs).
    pub fn parse(framed: &'a [u8]) -> Result<Self> {
        let mut rest = framed;
        let mut len = 0;
        while !rest.is_empty() {
            rest = take_bytes(rest, "list state items")?.1;
            len += 1;
        }
        Ok(Self { framed, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The framed bytes, as stored and as written into snapshots.
    pub fn framed(&self) -> &'a [u8] {
        self.framed
    }

    pub fn iter(&self) -> ListIter<'a> {
        ListIter { rest: self.framed }
    }

    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }
}

impl<'a> IntoIterator for ListItems<'a> {
    type Item = &'a [u8];
    type IntoIter = ListIter<'a>;
    fn into_iter(self) -> ListIter<'a> {
        self.iter()
    }
}

pub struct ListIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ListIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // The framing was validated by `ListItems::parse`, so an error cannot happen here; stopping is
        // the only sound reaction if it somehow did.
        let (item, rest) = take_bytes(self.rest, "list state items").ok()?;
        self.rest = rest;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            buf.push(9);
            assert_eq!(take_varint(&buf, "t").unwrap(), (v, &[9u8][..]));
        }
        assert!(take_varint(&[0x80], "t").is_err());
        assert!(take_bytes(&[5, 1, 2], "t").is_err());
    }

    #[test]
    fn composite_keys_do_not_collide() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        composite_key(&mut a, b"ab", b"c");
        composite_key(&mut b, b"a", b"bc");
        assert_ne!(a, b);
        assert_eq!(split_composite(&a).unwrap(), (&b"ab"[..], &b"c"[..]));
    }

    #[test]
    fn list_items_iterate_and_reject_bad_framing() {
        let mut buf = Vec::new();
        push_list_item(&mut buf, b"x");
        push_list_item(&mut buf, b"");
        push_list_item(&mut buf, b"yz");
        let items = ListItems::parse(&buf).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items.to_vec(), vec![b"x".to_vec(), vec![], b"yz".to_vec()]);
        buf.push(7);
        assert!(ListItems::parse(&buf).is_err());
    }
}
