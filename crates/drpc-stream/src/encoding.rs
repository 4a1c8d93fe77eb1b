//! How typed messages become bytes and back.

use std::error::Error as StdError;

use bytes::Bytes;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EncodingError(Box<dyn StdError + Send + Sync>);

impl EncodingError {
    /// Wraps the codec's own error.
    pub fn new(err: impl Into<Box<dyn StdError + Send + Sync>>) -> EncodingError {
        EncodingError(err.into())
    }
}

/// Turns messages of type `T` into bytes and back (Go's `drpc.Encoding`).
///
/// [`Prost`] is the protobuf encoding; [`Raw`] passes bytes through. Other
/// encodings plug in by implementing this trait for the message types they
/// handle.
pub trait Encoding<T>: Send + Sync + 'static {
    /// Appends the encoding of `msg` to `buf`.
    fn encode(&self, msg: &T, buf: &mut Vec<u8>) -> Result<(), EncodingError>;
    /// Decodes exactly one message from `data`.
    fn decode(&self, data: Bytes) -> Result<T, EncodingError>;
}

/// Protobuf through prost: bytes identical in meaning to Go's
/// `proto.Marshal` (field order aside, which decoders ignore).
#[cfg(feature = "prost")]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prost;

#[cfg(feature = "prost")]
impl<T: prost::Message + Default + 'static> Encoding<T> for Prost {
    fn encode(&self, msg: &T, buf: &mut Vec<u8>) -> Result<(), EncodingError> {
        // One allocation of the right size instead of growing by doubling.
        buf.reserve(msg.encoded_len());
        msg.encode(buf).map_err(EncodingError::new)
    }

    fn decode(&self, data: Bytes) -> Result<T, EncodingError> {
        T::decode(data).map_err(EncodingError::new)
    }
}

/// The identity encoding: messages are their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Raw;

impl Encoding<Bytes> for Raw {
    fn encode(&self, msg: &Bytes, buf: &mut Vec<u8>) -> Result<(), EncodingError> {
        buf.extend_from_slice(msg);
        Ok(())
    }

    fn decode(&self, data: Bytes) -> Result<Bytes, EncodingError> {
        Ok(data)
    }
}

#[cfg(all(test, feature = "prost"))]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct In {
        #[prost(int64, tag = "1")]
        r#in: i64,
    }

    #[test]
    fn prost_round_trip_matches_go_bytes() {
        let mut buf = Vec::new();
        Prost.encode(&In { r#in: 5 }, &mut buf).expect("encodes");
        assert_eq!(buf, [0x08, 0x05]);
        let back: In = Prost.decode(Bytes::from(buf)).expect("decodes");
        assert_eq!(back.r#in, 5);
        let bad: Result<In, _> = Prost.decode(Bytes::from_static(&[0x08]));
        assert!(bad.is_err());
    }

    #[test]
    fn raw_is_identity() {
        let mut buf = vec![1];
        Raw.encode(&Bytes::from_static(b"ab"), &mut buf)
            .expect("encodes");
        assert_eq!(buf, b"\x01ab");
        assert_eq!(Raw.decode(Bytes::from_static(b"x")).expect("decodes"), "x");
    }
}
