//! How typed messages become bytes and back.

use std::error::Error as StdError;

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes};

use crate::ZERO_COPY_MIN;

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

    /// Appends the encoding of `msg` to `buf`, which may keep large
    /// buffers the message shares (a [`Bytes`] field, say) by reference
    /// instead of copying them: they then go from the message to the
    /// transport without a copy.
    ///
    /// The default copies, through [`Encoding::encode`]; [`Prost`]
    /// overrides it.
    fn encode_to(&self, msg: &T, buf: &mut MessageBuf) -> Result<(), EncodingError> {
        self.encode(msg, &mut buf.run)
    }
}

/// An encoded message: runs of bytes the encoder wrote, and buffers of at
/// least [`ZERO_COPY_MIN`] bytes it shared rather than copied.
///
/// It is a [`BufMut`]: an encoder writes into it as into a `Vec<u8>`, and a
/// [`BufMut::put`] of a large [`Bytes`] keeps a reference to it (anything
/// else given to `put` in one piece of that size is copied once into a
/// buffer of its own). A `MessageBuf` is meant to be reused: its run
/// buffer is kept across messages while they are small.
#[derive(Debug, Default)]
pub struct MessageBuf {
    /// Finished runs and shared buffers, in order.
    parts: Vec<Bytes>,
    /// The bytes written since the last shared buffer.
    run: Vec<u8>,
    /// The length of `parts`.
    parts_len: usize,
}

impl MessageBuf {
    /// An empty buffer.
    pub fn new() -> MessageBuf {
        MessageBuf::default()
    }

    /// The encoded length.
    pub fn len(&self) -> usize {
        self.parts_len + self.run.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the buffer, keeping the run buffer's allocation.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.parts_len = 0;
        self.run.clear();
    }

    /// The message as one slice, when it is one: nothing was shared.
    pub fn as_contiguous(&self) -> Option<&[u8]> {
        self.parts.is_empty().then_some(self.run.as_slice())
    }

    /// Takes the message out as its parts in order, leaving the buffer
    /// empty.
    pub fn take_parts(&mut self) -> Vec<Bytes> {
        self.finish_run();
        self.parts_len = 0;
        std::mem::take(&mut self.parts)
    }

    /// Takes the message out as one [`Bytes`], copying only if it has more
    /// than one part.
    pub fn take_bytes(&mut self) -> Bytes {
        let mut parts = self.take_parts();
        match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
                parts.iter().for_each(|p| all.extend_from_slice(p));
                all.into()
            }
        }
    }

    /// Moves the current run, if any, behind the parts.
    fn finish_run(&mut self) {
        if !self.run.is_empty() {
            let run = Bytes::from(std::mem::take(&mut self.run));
            self.parts_len += run.len();
            self.parts.push(run);
        }
    }
}

// SAFETY: every method forwards to `Vec<u8>`'s implementation on `run`,
// which upholds the trait's contract; `put` only adds whole initialized
// `Bytes` parts next to it.
#[allow(unsafe_code)]
unsafe impl BufMut for MessageBuf {
    fn remaining_mut(&self) -> usize {
        self.run.remaining_mut() - self.parts_len.min(self.run.remaining_mut())
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `chunk_mut`, which is `run`'s.
        unsafe { self.run.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.run.chunk_mut()
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let len = src.remaining();
        if len >= ZERO_COPY_MIN && src.chunk().len() == len {
            // For `Bytes`, `copy_to_bytes` is a reference count, not a copy.
            self.finish_run();
            self.parts_len += len;
            self.parts.push(src.copy_to_bytes(len));
        } else {
            self.run.put(src);
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.run.extend_from_slice(src);
    }

    fn put_bytes(&mut self, val: u8, cnt: usize) {
        self.run.put_bytes(val, cnt);
    }
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

    fn encode_to(&self, msg: &T, buf: &mut MessageBuf) -> Result<(), EncodingError> {
        // Room for everything but the shared fields would be better; the
        // whole length errs on the generous side only for large messages.
        let len = msg.encoded_len();
        if len < ZERO_COPY_MIN {
            buf.run.reserve(len);
        }
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

    fn encode_to(&self, msg: &Bytes, buf: &mut MessageBuf) -> Result<(), EncodingError> {
        buf.put(msg.clone());
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
