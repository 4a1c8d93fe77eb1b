//! Raw TCP baselines: what the same message shapes cost without DRPC.
//!
//! The client's first byte chooses the mode of a connection:
//!
//! * `p` (ping-pong): the client sends a 4-byte big-endian length and that
//!   many payload bytes; the server echoes both back; repeat.
//! * `o` (one way): the client streams length-prefixed messages; the server
//!   reads and discards them, and once the client has shut down its
//!   sending side, answers with the number of message bytes it read (8 bytes, big
//!   endian).

use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::bench::{BenchResult, Size};

/// The first byte of a ping-pong connection.
pub const PING_PONG: u8 = b'p';
/// The first byte of a one-way connection.
pub const ONE_WAY: u8 = b'o';

/// Buffer size of the buffered halves.
const BUF: usize = 64 << 10;

/// Serves the TCP baselines on `listener` until an accept fails.
pub async fn echo_server(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve_connection(socket).await;
        });
    }
}

async fn serve_connection(socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::with_capacity(BUF, read);
    match read.read_u8().await? {
        PING_PONG => {
            let mut frame = Vec::new();
            loop {
                let mut len = [0u8; 4];
                match read.read_exact(&mut len).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
                let n = u32::from_be_bytes(len) as usize;
                frame.clear();
                frame.extend_from_slice(&len);
                frame.resize(4 + n, 0);
                read.read_exact(&mut frame[4..]).await?;
                write.write_all(&frame).await?;
            }
        }
        ONE_WAY => {
            let mut total: u64 = 0;
            let mut buf = vec![0u8; BUF];
            loop {
                let n = read.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            write.write_all(&total.to_be_bytes()).await?;
            write.shutdown().await
        }
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown mode byte {other:#x}"),
        )),
    }
}

/// The mode of a TCP baseline run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Request, echoed response; one operation per round trip.
    PingPong,
    /// Messages one way; one operation per message written.
    OneWay,
}

impl Mode {
    /// The kind printed in the report: `tcp-pingpong` or `tcp-oneway`.
    pub fn kind(self) -> &'static str {
        match self {
            Mode::PingPong => "tcp-pingpong",
            Mode::OneWay => "tcp-oneway",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "pingpong" => Ok(Mode::PingPong),
            "oneway" => Ok(Mode::OneWay),
            other => Err(format!("unknown mode {other:?} (pingpong, oneway)")),
        }
    }
}

/// Runs a TCP baseline against [`echo_server`] at `addr`: one connection,
/// payloads of the encoded size of `size`'s request, for `duration`.
pub async fn run_tcp_bench(
    addr: &str,
    mode: Mode,
    size: Size,
    duration: Duration,
) -> Result<BenchResult, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    socket.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    let payload_len = size.encoded_len();
    let mut frame = Vec::with_capacity(4 + payload_len);
    frame.extend_from_slice(&(payload_len as u32).to_be_bytes());
    frame.resize(4 + payload_len, 0x5a);
    let (read, write) = socket.into_split();
    let mut read = BufReader::with_capacity(BUF, read);
    let mut latencies = Vec::with_capacity(4096);
    let start = Instant::now();
    let deadline = start + duration;
    match mode {
        Mode::PingPong => {
            let mut write = write;
            write.write_all(&[PING_PONG]).await.map_err(io("write"))?;
            let mut back = vec![0u8; frame.len()];
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                write.write_all(&frame).await.map_err(io("write"))?;
                read.read_exact(&mut back).await.map_err(io("read"))?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            if back[..4] != frame[..4] && !latencies.is_empty() {
                return Err("the echo server sent back another length".into());
            }
        }
        Mode::OneWay => {
            let mut write = BufWriter::with_capacity(BUF, write);
            write.write_all(&[ONE_WAY]).await.map_err(io("write"))?;
            loop {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                write.write_all(&frame).await.map_err(io("write"))?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            write.flush().await.map_err(io("flush"))?;
            write.shutdown().await.map_err(io("shutdown"))?;
            let total = read.read_u64().await.map_err(io("reading the total"))?;
            let sent = latencies.len() as u64 * frame.len() as u64;
            if total != sent {
                return Err(format!("the sink read {total} bytes, {sent} were sent"));
            }
        }
    }
    let elapsed = start.elapsed();
    Ok(BenchResult::from_latencies(
        mode.kind(),
        size.name(),
        1,
        1,
        latencies,
        elapsed,
        payload_len,
    ))
}
