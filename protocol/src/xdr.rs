//! A small XDR (RFC 4506) runtime that is safe on untrusted input.
//!
//! Every variable-length item is checked against its declared bound *and* against the bytes
//! actually left in the message before anything is allocated, so a peer cannot make the daemon
//! reserve memory it did not send. Truncated input, non-zero padding and out-of-range
//! enum/bool/char values are errors. Types declare their wire form with [`xdr_struct!`] and
//! [`xdr_enum!`]; everything else (unions, irregular cases) implements [`Xdr`] by hand.

use bytes::{BufMut, BytesMut};

use crate::limits::STRING_MAX;

/// Why a payload failed to decode. Cheap: no allocation, no backtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("length {len} exceeds the limit {max}")]
    TooLong { len: u64, max: u64 },
    #[error("non-zero padding")]
    BadPadding,
    #[error("invalid boolean {0}")]
    BadBool(u32),
    #[error("value {value} out of range for {what}")]
    OutOfRange { what: &'static str, value: i64 },
    #[error("string is not valid UTF-8")]
    BadUtf8,
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
}

/// A cursor over one message's payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread bytes (stream payloads are raw, not XDR).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads `n` bytes of opaque data plus its padding, which must be zero.
    pub fn opaque_bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let pad = (4 - n % 4) % 4;
        if n.checked_add(pad).is_none_or(|t| t > self.remaining()) {
            return Err(DecodeError::Truncated);
        }
        let data = self.take(n)?;
        if self.take(pad)?.iter().any(|&b| b != 0) {
            return Err(DecodeError::BadPadding);
        }
        Ok(data)
    }

    /// Reads a length word and checks it against `max` and against what is left, assuming
    /// each element needs at least `min_elem_size` wire bytes. Done before any allocation.
    pub fn length(&mut self, max: usize, min_elem_size: usize) -> Result<usize, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong {
                len: len as u64,
                max: max as u64,
            });
        }
        if len.saturating_mul(min_elem_size.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }

    /// Errors unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// A type with an XDR wire form.
pub trait Xdr: Sized {
    fn encode(&self, out: &mut BytesMut);
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// A variable-length type whose decoder takes the field's declared maximum.
pub trait XdrBounded: Xdr {
    fn decode_max(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError>;
}

/// Decodes a whole payload, rejecting trailing bytes.
pub fn from_bytes<T: Xdr>(payload: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(payload);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Encodes a value into a fresh buffer.
pub fn to_bytes<T: Xdr>(v: &T) -> BytesMut {
    let mut out = BytesMut::new();
    v.encode(&mut out);
    out
}

fn put_padding(out: &mut BytesMut, n: usize) {
    out.put_bytes(0, (4 - n % 4) % 4);
}

impl Xdr for () {
    fn encode(&self, _: &mut BytesMut) {}
    fn decode(_: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Xdr for u32 {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(*self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u32()
    }
}

impl Xdr for i32 {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(*self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.u32()? as i32)
    }
}

impl Xdr for u64 {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(*self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u64()
    }
}

impl Xdr for i64 {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i64(*self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(r.u64()? as i64)
    }
}

impl Xdr for bool {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(u32::from(*self));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadBool(v)),
        }
    }
}

/// rpcgen's `unsigned char` / `unsigned short` travel as 4-byte words; values must fit.
macro_rules! small_unsigned {
    ($($t:ty),*) => {$(
        impl Xdr for $t {
            fn encode(&self, out: &mut BytesMut) {
                out.put_u32(u32::from(*self));
            }
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let v = r.u32()?;
                <$t>::try_from(v).map_err(|_| DecodeError::OutOfRange {
                    what: stringify!($t),
                    value: i64::from(v),
                })
            }
        }
    )*};
}
small_unsigned!(u8, u16);

/// rpcgen's `char` is a signed 4-byte word.
impl Xdr for i8 {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(i32::from(*self));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let v = r.u32()? as i32;
        i8::try_from(v).map_err(|_| DecodeError::OutOfRange {
            what: "char",
            value: i64::from(v),
        })
    }
}

impl Xdr for String {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.len() as u32);
        out.put_slice(self.as_bytes());
        put_padding(out, self.len());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_max(r, STRING_MAX)
    }
}

impl XdrBounded for String {
    fn decode_max(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError> {
        let len = r.length(max, 1)?;
        let bytes = r.opaque_bytes(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8)
    }
}

/// Variable-length opaque data (`opaque x<N>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opaque(pub Vec<u8>);

impl Xdr for Opaque {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.0.len() as u32);
        out.put_slice(&self.0);
        put_padding(out, self.0.len());
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_max(r, STRING_MAX)
    }
}

impl XdrBounded for Opaque {
    fn decode_max(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError> {
        let len = r.length(max, 1)?;
        Ok(Opaque(r.opaque_bytes(len)?.to_vec()))
    }
}

/// Fixed-length opaque data (`opaque x[N]`): no length word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedOpaque<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for FixedOpaque<N> {
    fn default() -> Self {
        FixedOpaque([0; N])
    }
}

impl<const N: usize> Xdr for FixedOpaque<N> {
    fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.0);
        put_padding(out, N);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(r.opaque_bytes(N)?);
        Ok(FixedOpaque(a))
    }
}

/// Fixed-length arrays of non-opaque elements (`char model[32]` is 32 four-byte words).
impl<T: Xdr + Copy + Default, const N: usize> Xdr for [T; N] {
    fn encode(&self, out: &mut BytesMut) {
        for v in self {
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut a = [T::default(); N];
        for slot in a.iter_mut() {
            *slot = T::decode(r)?;
        }
        Ok(a)
    }
}

impl<T: Xdr> Xdr for Vec<T> {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.len() as u32);
        for v in self {
            v.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // Without a declared bound only the bytes left limit the count.
        Self::decode_max(r, usize::MAX)
    }
}

impl<T: Xdr> XdrBounded for Vec<T> {
    fn decode_max(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError> {
        // Every XDR item takes at least four bytes, so `len * 4` must fit in what is left.
        let len = r.length(max, 4)?;
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            v.push(T::decode(r)?);
        }
        Ok(v)
    }
}

/// Optional data (`T *x`): a boolean "present" word, then the value.
impl<T: Xdr> Xdr for Option<T> {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_u32(0),
            Some(v) => {
                out.put_u32(1);
                v.encode(out);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if bool::decode(r)? {
            Ok(Some(T::decode(r)?))
        } else {
            Ok(None)
        }
    }
}

impl<T: XdrBounded> XdrBounded for Option<T> {
    fn decode_max(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError> {
        if bool::decode(r)? {
            Ok(Some(T::decode_max(r, max)?))
        } else {
            Ok(None)
        }
    }
}

/// Declares a struct and its XDR form: fields travel in declaration order. A field may carry
/// `[max N]` to bound a variable-length type (`String`, `Opaque`, `Vec<T>`, `Option<..>`).
#[macro_export]
macro_rules! xdr_struct {
    ($(
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty $([max $max:expr])? ),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        impl $crate::xdr::Xdr for $name {
            #[allow(unused_variables)]
            fn encode(&self, out: &mut ::bytes::BytesMut) {
                $( $crate::xdr::Xdr::encode(&self.$field, out); )*
            }
            #[allow(unused_variables)]
            fn decode(r: &mut $crate::xdr::Reader<'_>) -> Result<Self, $crate::xdr::DecodeError> {
                Ok($name {
                    $( $field: $crate::xdr_struct!(@decode r, $ty $(, $max)?), )*
                })
            }
        }
    )*};
    (@decode $r:ident, $ty:ty) => { <$ty as $crate::xdr::Xdr>::decode($r)? };
    (@decode $r:ident, $ty:ty, $max:expr) => {
        <$ty as $crate::xdr::XdrBounded>::decode_max($r, $max as usize)?
    };
}

/// Declares an `i32` enum; decoding any other value is an error.
#[macro_export]
macro_rules! xdr_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        $vis enum $name { $($variant = $value),* }

        impl $name {
            pub fn from_i32(v: i32) -> Option<Self> {
                match v {
                    $( x if x == $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl $crate::xdr::Xdr for $name {
            fn encode(&self, out: &mut ::bytes::BytesMut) {
                ::bytes::BufMut::put_i32(out, *self as i32);
            }
            fn decode(r: &mut $crate::xdr::Reader<'_>) -> Result<Self, $crate::xdr::DecodeError> {
                let v = <i32 as $crate::xdr::Xdr>::decode(r)?;
                $name::from_i32(v).ok_or($crate::xdr::DecodeError::OutOfRange {
                    what: stringify!($name),
                    value: i64::from(v),
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    xdr_struct! {
        struct Sample {
            name: Option<String>,
            flags: u32,
            list: Vec<u32> [max 3],
            tag: String [max 5],
        }
    }

    fn sample() -> Sample {
        Sample {
            name: Some("uml:///system".into()),
            flags: 1,
            list: vec![7, 8],
            tag: "abc".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = to_bytes(&sample());
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(from_bytes::<Sample>(&bytes), Ok(sample()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = to_bytes(&sample());
        for n in 0..bytes.len() {
            assert!(from_bytes::<Sample>(&bytes[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut bytes = to_bytes(&sample()).to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(from_bytes::<Sample>(&bytes), Err(DecodeError::Trailing(4)));
    }

    #[test]
    fn bounds_checked_before_allocation() {
        // A huge claimed length with nothing behind it: refused without reserving anything.
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            from_bytes::<Vec<u64>>(&huge),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            from_bytes::<String>(&huge),
            Err(DecodeError::TooLong { .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]);
        assert!(matches!(
            Vec::<u32>::decode_max(&mut r, 3),
            Err(DecodeError::TooLong { len: 4, max: 3 })
        ));
    }

    #[test]
    fn truncated_final_string_rejected_even_when_aligned() {
        // Claims 8 bytes, carries 4: a multiple of four but still short.
        let b = [0, 0, 0, 8, b'a', b'b', b'c', b'd'];
        assert_eq!(from_bytes::<String>(&b), Err(DecodeError::Truncated));
    }

    #[test]
    fn padding_must_be_zero() {
        let b = [0, 0, 0, 1, b'a', 0, 1, 0];
        assert_eq!(from_bytes::<String>(&b), Err(DecodeError::BadPadding));
    }

    #[test]
    fn bool_and_small_ints_range_checked() {
        assert_eq!(
            from_bytes::<bool>(&[0, 0, 0, 2]),
            Err(DecodeError::BadBool(2))
        );
        assert!(from_bytes::<u8>(&[0, 0, 1, 0]).is_err());
        assert!(from_bytes::<u16>(&[0, 1, 0, 0]).is_err());
        assert_eq!(from_bytes::<i8>(&[0xff, 0xff, 0xff, 0xff]), Ok(-1));
        assert!(from_bytes::<i8>(&[0, 0, 0, 200]).is_err());
    }

    #[test]
    fn bad_utf8_rejected() {
        assert_eq!(
            from_bytes::<String>(&[0, 0, 0, 1, 0xff, 0, 0, 0]),
            Err(DecodeError::BadUtf8)
        );
    }

    xdr_enum! { enum Colour { Red = 0, Blue = 2 } }

    #[test]
    fn enums_reject_unknown_values() {
        assert_eq!(from_bytes::<Colour>(&[0, 0, 0, 2]), Ok(Colour::Blue));
        assert!(from_bytes::<Colour>(&[0, 0, 0, 1]).is_err());
    }

    #[test]
    fn fixed_opaque_and_char_arrays() {
        let u = FixedOpaque::<3>([1, 2, 3]);
        let b = to_bytes(&u);
        assert_eq!(&b[..], &[1, 2, 3, 0]);
        assert_eq!(from_bytes::<FixedOpaque<3>>(&b), Ok(u));
        let chars: [i8; 2] = [b'x' as i8, 0];
        assert_eq!(to_bytes(&chars).len(), 8);
    }
}
