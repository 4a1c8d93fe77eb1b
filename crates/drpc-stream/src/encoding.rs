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

    /// The length `msg` encodes to, if the encoding knows it without
    /// encoding: lets a batch send a large message by reference rather than
    /// copy it ([`MessageBatch::push_small`]). `None` by default.
    fn encoded_len(&self, msg: &T) -> Option<usize> {
        let _ = msg;
        None
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

    fn encoded_len(&self, msg: &T) -> Option<usize> {
        Some(msg.encoded_len())
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

    fn encoded_len(&self, msg: &Bytes) -> Option<usize> {
        Some(msg.len())
    }
}

#[cfg(all(test, feature = "prost"))]
mod tests {
    use super::*;

    #[test]
    fn push_small_leaves_large_messages_out() {
        let mut batch = MessageBatch::new();
        assert!(
            batch
                .push_small(&Raw, &Bytes::from_static(b"ab"))
                .expect("encodes")
        );
        let large = Bytes::from(vec![7; ZERO_COPY_MIN]);
        assert!(!batch.push_small(&Raw, &large).expect("encodes"));
        assert!(
            batch
                .push_small(&Raw, &Bytes::from_static(b"c"))
                .expect("encodes")
        );
        assert_eq!((batch.len(), batch.bytes()), (2, 3));
        assert_eq!(
            (batch.message(0), batch.message(1)),
            (&b"ab"[..], &b"c"[..])
        );
        // An encoding that cannot tell the length: encoded, then taken out.
        struct Opaque;
        impl Encoding<Bytes> for Opaque {
            fn encode(&self, msg: &Bytes, buf: &mut Vec<u8>) -> Result<(), EncodingError> {
                buf.extend_from_slice(msg);
                Ok(())
            }
            fn decode(&self, data: Bytes) -> Result<Bytes, EncodingError> {
                Ok(data)
            }
        }
        assert!(!batch.push_small(&Opaque, &large).expect("encodes"));
        assert_eq!((batch.len(), batch.bytes()), (2, 3), "as it was");
    }

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

    #[derive(Clone, PartialEq, prost::Message)]
    struct WithBytes {
        #[prost(int64, tag = "1")]
        r#in: i64,
        #[prost(bytes = "bytes", tag = "2")]
        buf: Bytes,
        #[prost(bytes = "vec", tag = "3")]
        vec: Vec<u8>,
        #[prost(string, tag = "4")]
        name: String,
    }

    fn prost_bytes(msg: &WithBytes) -> Vec<u8> {
        let mut v = Vec::new();
        prost::Message::encode(msg, &mut v).expect("encodes");
        v
    }

    #[test]
    fn a_large_bytes_field_is_shared_not_copied() {
        let big = Bytes::from(vec![0x5a; 100_000]);
        let msg = WithBytes {
            r#in: 1,
            buf: big.clone(),
            vec: vec![1, 2, 3],
            name: "n".into(),
        };
        let mut buf = MessageBuf::new();
        Prost.encode_to(&msg, &mut buf).expect("encodes");
        assert_eq!(buf.len(), prost::Message::encoded_len(&msg));
        assert!(buf.as_contiguous().is_none());
        let parts = buf.take_parts();
        assert!(buf.is_empty());
        assert_eq!(parts.len(), 3, "head, shared field, tail: {parts:?}");
        assert_eq!(parts[1].as_ptr(), big.as_ptr(), "the field's own memory");
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, prost_bytes(&msg), "the same bytes as prost's");
        let back: WithBytes = Prost.decode(joined.into()).expect("decodes");
        assert_eq!(back, msg);
    }

    #[test]
    fn small_messages_stay_contiguous_and_reuse_the_buffer() {
        let msg = WithBytes {
            r#in: 300,
            buf: Bytes::from(vec![1; ZERO_COPY_MIN - 1]),
            vec: Vec::new(),
            name: String::new(),
        };
        let mut buf = MessageBuf::new();
        Prost.encode_to(&msg, &mut buf).expect("encodes");
        assert_eq!(buf.as_contiguous(), Some(prost_bytes(&msg).as_slice()));
        let first = buf.as_contiguous().map(<[u8]>::as_ptr);
        buf.clear();
        Prost.encode_to(&msg, &mut buf).expect("encodes");
        assert_eq!(
            buf.as_contiguous().map(<[u8]>::as_ptr),
            first,
            "no new allocation"
        );
        assert_eq!(buf.take_bytes(), prost_bytes(&msg));
    }

    #[test]
    fn a_large_vec_field_is_copied_once_into_its_own_part() {
        let msg = WithBytes {
            r#in: 0,
            buf: Bytes::new(),
            vec: vec![3; 50_000],
            name: "x".into(),
        };
        let mut buf = MessageBuf::new();
        Prost.encode_to(&msg, &mut buf).expect("encodes");
        assert_eq!(buf.take_bytes(), prost_bytes(&msg));
    }

    #[test]
    fn the_default_encode_to_copies_through_encode() {
        struct Upper;
        impl Encoding<String> for Upper {
            fn encode(&self, msg: &String, buf: &mut Vec<u8>) -> Result<(), EncodingError> {
                buf.extend_from_slice(msg.to_uppercase().as_bytes());
                Ok(())
            }
            fn decode(&self, data: Bytes) -> Result<String, EncodingError> {
                String::from_utf8(data.to_vec()).map_err(EncodingError::new)
            }
        }
        let mut buf = MessageBuf::new();
        Upper
            .encode_to(&"abc".to_owned(), &mut buf)
            .expect("encodes");
        assert_eq!(buf.as_contiguous(), Some(&b"ABC"[..]));
    }

    #[test]
    fn raw_shares_large_messages() {
        let big = Bytes::from(vec![4; ZERO_COPY_MIN]);
        let mut buf = MessageBuf::new();
        Raw.encode_to(&big, &mut buf).expect("encodes");
        let parts = buf.take_parts();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].as_ptr(), big.as_ptr());
        Raw.encode_to(&Bytes::from_static(b"hi"), &mut buf)
            .expect("encodes");
        assert_eq!(buf.as_contiguous(), Some(&b"hi"[..]));
    }
}

/// Several encoded messages, sent together by
/// [`Stream::send_batch`](crate::Stream::send_batch): one buffer for all of
/// them, reused from batch to batch, so that encoding a run of small
/// messages allocates nothing once the buffer has grown.
#[derive(Debug, Default, Clone)]
pub struct MessageBatch {
    data: Vec<u8>,
    /// Where each message ends in `data`.
    ends: Vec<usize>,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> MessageBatch {
        MessageBatch::default()
    }

    /// Adds `msg`, encoded by `encoding`; on an encoding error the batch is
    /// as it was.
    pub fn push<T, E: Encoding<T>>(&mut self, encoding: &E, msg: &T) -> Result<(), EncodingError> {
        let start = self.data.len();
        if let Err(e) = encoding.encode(msg, &mut self.data) {
            self.data.truncate(start);
            return Err(e);
        }
        self.ends.push(self.data.len());
        Ok(())
    }

    /// Adds `msg` unless it is large: a message of at least
    /// [`ZERO_COPY_MIN`] bytes is left out (`Ok(false)`), for the caller to
    /// send alone with [`Stream::send_encoded`](crate::Stream::send_encoded),
    /// by reference instead of copied twice, after sending what the batch
    /// holds. The length comes from [`Encoding::encoded_len`], or from
    /// encoding the message when the encoding does not know it.
    pub fn push_small<T, E: Encoding<T>>(
        &mut self,
        encoding: &E,
        msg: &T,
    ) -> Result<bool, EncodingError> {
        if encoding
            .encoded_len(msg)
            .is_some_and(|len| len >= ZERO_COPY_MIN)
        {
            return Ok(false);
        }
        self.push(encoding, msg)?;
        let start = match self.ends.len() {
            0 | 1 => 0,
            n => self.ends[n - 2],
        };
        if self.data.len() - start >= ZERO_COPY_MIN {
            self.data.truncate(start);
            self.ends.pop();
            return Ok(false);
        }
        Ok(true)
    }

    /// An empty batch with room for `messages` messages of `bytes` bytes.
    pub(crate) fn with_capacity(messages: usize, bytes: usize) -> MessageBatch {
        MessageBatch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(messages),
        }
    }

    /// Adds `msg` compressed with `compression`; on an error the batch is
    /// as it was.
    pub(crate) fn push_compressed(
        &mut self,
        compression: drpc_wire::Compression,
        msg: &[u8],
    ) -> Result<(), drpc_wire::CompressionError> {
        compression.compress(msg, &mut self.data)?;
        self.ends.push(self.data.len());
        Ok(())
    }

    /// Adds an encoded message.
    pub fn push_encoded(&mut self, msg: &[u8]) {
        self.data.extend_from_slice(msg);
        self.ends.push(self.data.len());
    }

    /// The number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of all messages together.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Message `i` (panics past [`MessageBatch::len`]).
    pub fn message(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Where message `i` ends among the batch's bytes.
    pub(crate) fn end(&self, i: usize) -> usize {
        self.ends[i]
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}
