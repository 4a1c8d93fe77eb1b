//! The DRPC wire format, byte-compatible with storj.io/drpc.
//!
//! This crate is the lowest layer of the workspace: it knows bytes, frames
//! and packets, and nothing about RPC semantics. Its core is sans-IO (it
//! takes bytes or frames and returns frames, packets or typed errors), with
//! thin tokio adapters in [`FrameReader`] and [`FrameWriter`].
//!
//! * [`Kind`], [`Id`], [`Frame`], [`Packet`]: the vocabulary of
//!   protocol.md §1–§4.
//! * [`read_varint`] / [`append_varint`]: Go's varint rules exactly.
//! * [`FrameHead::parse`], [`Frame::parse`], [`FrameDecoder`]: parsing;
//!   [`append_frame`], [`append_packet`], [`split_frames`]: encoding and
//!   splitting.
//! * [`PacketAssembler`]: frames of **one stream** to packets, the rule a
//!   multiplexed connection needs; [`ConnectionIdOrder`]: the original
//!   connection-wide id rule, for sequential mode.
//! * [`WindowUpdate`], [`FlowNegotiation`]: flow-control frames, judged
//!   before assembly and dropped (never fatal) when they do not conform.
//! * [`CodedError`], [`code_of`]: the Error payload and error codes;
//!   [`encode_metadata`], [`decode_metadata`]: the InvokeMetadata payload.
//! * [`Compression`]: the fork's per-stream compression of Message
//!   payloads (`drpc-compression: snappy`, Snappy block format; the fork's
//!   `minlz-fastest` with the `minlz` feature), with the decompressed
//!   length checked against a limit before anything is allocated.
//!
//! [`FrameReader::coalescing`] (what a connection uses) joins the frames of a
//! large message as it reads them, straight from the transport into one
//! buffer, recycled through a small process-wide pool once the message is
//! dropped: the kernel's copy is the only one, and no fresh pages are
//! faulted in per message.
//!
//! Nothing here panics on input from the network: malformed bytes give a
//! [`WireError`], which is always fatal for the connection that sent them.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use drpc_wire::{FrameDecoder, Id, Kind, PacketAssembler, append_packet};
//!
//! // A 70 000-byte message is sent as two frames (64 KiB + 4464 bytes).
//! let mut wire = BytesMut::new();
//! append_packet(&mut wire, Id::new(7, 1), Kind::MESSAGE, false, &[1u8; 70_000], 0);
//!
//! let decoder = FrameDecoder::default();
//! let mut assembler = PacketAssembler::default();
//! let mut packets = Vec::new();
//! while let Some(frame) = decoder.decode(&mut wire)? {
//!     if let Some(packet) = assembler.push(frame)? {
//!         packets.push(packet);
//!     }
//! }
//! assert_eq!(packets.len(), 1);
//! assert_eq!(packets[0].data.len(), 70_000);
//! # Ok::<(), drpc_wire::WireError>(())
//! ```

mod assembler;
mod compress;
mod decoder;
mod errcode;
mod error;
mod frame;
mod io;
mod kind;
mod metadata;
mod packet;
mod pool;
mod sniff;
mod varint;
mod window;

pub use assembler::{ConnectionIdOrder, DEFAULT_MAX_PACKET_SIZE, PacketAssembler};
pub use compress::{
    COMPRESSION_METADATA_KEY, Compression, CompressionError, CompressionSet, UnsupportedCompression,
};
pub use decoder::FrameDecoder;
pub use errcode::{
    Code, CodedError, RESOURCE_EXHAUSTED, Status, UNIMPLEMENTED, append_error, code_of,
};
pub use error::WireError;
pub use frame::{
    Frame, FrameHead, Id, MAX_HEADER_LEN, MIN_FRAME_LEN, append_frame, append_frame_header,
    header_byte, header_len,
};
pub use io::{
    COALESCE_MIN, DEFAULT_WRITER_BUFFER_SIZE, FrameReader, FrameWriter, NextFrame, ReadError,
};
pub use kind::Kind;
pub use metadata::{
    Metadata, MetadataError, TIMEOUT_METADATA_KEY, decode_metadata, encode_metadata,
    encode_timeout, parse_timeout,
};
pub use packet::{
    DEFAULT_SPLIT_SIZE, Packet, SplitFrames, append_packet, effective_split_size,
    packet_encoded_len, split_frames,
};
pub use pool::POOL_MAX_BYTES;
pub use sniff::{Foreign, MIGRATION_HEADER, Sniffed, sniff};
pub use varint::{MAX_VARINT_LEN, append_varint, read_varint, varint_len};
pub use window::{FLOW_CONTROL_METADATA_KEY, FlowNegotiation, FlowParams, WindowUpdate};
