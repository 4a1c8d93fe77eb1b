//! Golden vector tests: every capture in `shared/vectors` is decoded with
//! this crate and compared, frame by frame and packet by packet, with the
//! decode tables of `shared/vectors/README.md` (produced by Go's own
//! `drpcwire.ParseFrame` and `drpcwire.Reader.ReadPacket`). The frames are
//! then re-encoded and must give back the captured bytes exactly.
//!
//! The vectors directory is `$DRPC_VECTORS_DIR` if set, else
//! `<workspace>/../shared/vectors`. A missing directory or file is a test
//! failure, never a skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use drpc_wire::{
    CodedError, ConnectionIdOrder, Frame, FrameDecoder, Kind, Packet, PacketAssembler,
    decode_metadata,
};

/// The number of scenarios the README documents, each with two files.
const EXPECTED_SCENARIOS: usize = 13;
const EXPECTED_HEX_FILES: usize = 2 * EXPECTED_SCENARIOS;

// ---------------------------------------------------------------------------
// Locating and reading the vectors
// ---------------------------------------------------------------------------

fn vectors_dir() -> PathBuf {
    let dir = match std::env::var_os("DRPC_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    assert!(
        dir.is_dir(),
        "vectors directory {} is missing (set DRPC_VECTORS_DIR to override)",
        dir.display()
    );
    dir
}

/// All `*.hex` files of the directory, sorted by name.
fn hex_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hex"))
        .collect();
    files.sort();
    files
}

fn read_hex_file(path: &Path) -> Vec<u8> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex_decode(&digits).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hex_decode(digits: &str) -> Result<Vec<u8>, String> {
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            let pair = digits.get(i..i + 2).ok_or("non-ASCII hex")?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("bad hex {pair:?}: {e}"))
        })
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `unary_small.client.hex` -> (`unary_small`, `client`).
fn split_file_name(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("UTF-8 file name");
    let stem = name.strip_suffix(".hex").expect(".hex file");
    let (scenario, side) = stem
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("{name}: expected NAME.client.hex or NAME.server.hex"));
    assert!(
        side == "client" || side == "server",
        "{name}: side must be client or server"
    );
    (scenario.to_owned(), side.to_owned())
}

// ---------------------------------------------------------------------------
// The README decode tables
// ---------------------------------------------------------------------------

/// One frame row: `#  offset header(hex) kind stream msg done ctrl len data`.
#[derive(Debug)]
struct FrameRow {
    index: usize,
    offset: usize,
    header: Vec<u8>,
    kind_name: String,
    kind: u8,
    stream: u64,
    message: u64,
    done: bool,
    control: bool,
    len: usize,
    /// The leading data bytes shown (up to 16).
    data_prefix: Vec<u8>,
    /// Whether the data column ended with `..` (more bytes than shown).
    truncated: bool,
    /// The quoted RPC name after the data column, if any.
    rpc: Option<String>,
}

/// One packet row: `pN s:S m:M Kind(k) ctrl:B len:N  description`.
#[derive(Debug)]
struct PacketRow {
    index: usize,
    stream: u64,
    message: u64,
    kind_name: String,
    kind: u8,
    control: bool,
    len: usize,
    description: String,
}

/// The decode of one direction of one scenario.
#[derive(Debug, Default)]
struct Direction {
    total_bytes: usize,
    frame_count: usize,
    frames: Vec<FrameRow>,
    packet_count: usize,
    packets: Vec<PacketRow>,
}

/// `client` is client->server (the `.client.hex` file), `server` is
/// server->client.
#[derive(Debug, Default)]
struct Scenario {
    client: Option<Direction>,
    server: Option<Direction>,
}

/// Splits off the first whitespace-separated token: `(token, rest)`.
fn take_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(end) => (&s[..end], &s[end..]),
        None => (s, ""),
    }
}

fn parse_num<T: std::str::FromStr>(token: &str, what: &str) -> T {
    token
        .parse()
        .unwrap_or_else(|_| panic!("README: cannot parse {what} from {token:?}"))
}

fn parse_bool(token: &str, what: &str) -> bool {
    match token {
        "true" => true,
        "false" => false,
        _ => panic!("README: {what} must be true or false, got {token:?}"),
    }
}

/// `Invoke(1)` -> ("Invoke", 1).
fn parse_kind(token: &str) -> (String, u8) {
    let (name, rest) = token
        .split_once('(')
        .unwrap_or_else(|| panic!("README: kind {token:?} is not Name(k)"));
    let value = rest
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("README: kind {token:?} is not Name(k)"));
    (name.to_owned(), parse_num(value, "kind value"))
}

/// `s:1` with prefix `s:` -> "1".
fn strip_label<'a>(token: &'a str, label: &str) -> &'a str {
    token
        .strip_prefix(label)
        .unwrap_or_else(|| panic!("README: expected {label}.. got {token:?}"))
}

/// The text between the first and the last double quote of `s`.
fn quoted(s: &str) -> Option<String> {
    let start = s.find('"')?;
    let end = s.rfind('"')?;
    (end > start).then(|| s[start + 1..end].to_owned())
}

fn parse_frame_row(line: &str) -> FrameRow {
    let (index, rest) = take_token(line);
    let (offset, rest) = take_token(rest);
    let (header, rest) = take_token(rest);
    let (kind, rest) = take_token(rest);
    let (stream, rest) = take_token(rest);
    let (message, rest) = take_token(rest);
    let (done, rest) = take_token(rest);
    let (control, rest) = take_token(rest);
    let (len, rest) = take_token(rest);
    // The data column is absent for empty frames, and may be followed by a
    // quoted RPC name.
    let (data, rest) = match take_token(rest) {
        (token, tail) if !token.is_empty() && !token.starts_with('"') => (token, tail),
        _ => ("", rest),
    };
    let (data, truncated) = match data.strip_suffix("..") {
        Some(shown) => (shown, true),
        None => (data, false),
    };
    let (kind_name, kind) = parse_kind(kind);
    FrameRow {
        index: parse_num(index, "frame index"),
        offset: parse_num(offset, "offset"),
        header: hex_decode(header).unwrap_or_else(|e| panic!("README header {header:?}: {e}")),
        kind_name,
        kind,
        stream: parse_num(stream, "stream"),
        message: parse_num(message, "msg"),
        done: parse_bool(done, "done"),
        control: parse_bool(control, "ctrl"),
        len: parse_num(len, "len"),
        data_prefix: hex_decode(data).unwrap_or_else(|e| panic!("README data {data:?}: {e}")),
        truncated,
        rpc: quoted(rest),
    }
}

fn parse_packet_row(line: &str) -> PacketRow {
    let (index, rest) = take_token(line);
    let (stream, rest) = take_token(rest);
    let (message, rest) = take_token(rest);
    let (kind, rest) = take_token(rest);
    let (control, rest) = take_token(rest);
    let (len, rest) = take_token(rest);
    let (kind_name, kind) = parse_kind(kind);
    PacketRow {
        index: parse_num(strip_label(index, "p"), "packet index"),
        stream: parse_num(strip_label(stream, "s:"), "packet stream"),
        message: parse_num(strip_label(message, "m:"), "packet message"),
        kind_name,
        kind,
        control: parse_bool(strip_label(control, "ctrl:"), "packet ctrl"),
        len: parse_num(strip_label(len, "len:"), "packet len"),
        description: rest.trim().to_owned(),
    }
}

/// `client->server: 42 bytes, 4 frames (...)` or `...: 0 bytes, no frames`.
fn parse_direction_line(summary: &str) -> Direction {
    let (bytes, rest) = take_token(summary);
    assert_eq!(take_token(rest).0, "bytes,", "README: {summary:?}");
    let (_, rest) = take_token(rest);
    let (frames, _) = take_token(rest);
    Direction {
        total_bytes: parse_num(bytes, "direction byte count"),
        frame_count: if frames == "no" {
            0
        } else {
            parse_num(frames, "direction frame count")
        },
        ..Direction::default()
    }
}

/// Parses every `### <scenario>` section's "Frame-by-frame decode" block.
fn parse_readme(text: &str) -> BTreeMap<String, Scenario> {
    let mut scenarios = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut seen_decode_heading = false;
    let mut in_block = false;
    // Which direction rows currently belong to: true = client->server.
    let mut side: Option<bool> = None;

    for line in text.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            assert!(!in_block, "README: heading {name:?} inside a code block");
            let name = name.trim().to_owned();
            assert!(
                !scenarios.contains_key(&name),
                "README: duplicate scenario {name}"
            );
            scenarios.insert(name.clone(), Scenario::default());
            current = Some(name);
            seen_decode_heading = false;
            side = None;
            continue;
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if line.trim() == "Frame-by-frame decode:" {
            seen_decode_heading = true;
            continue;
        }
        if line.trim_start().starts_with("```") {
            if in_block {
                in_block = false;
                seen_decode_heading = false;
            } else if seen_decode_heading {
                in_block = true;
            }
            continue;
        }
        if !in_block {
            continue;
        }

        let scenario = scenarios.get_mut(name).expect("current scenario");
        let row = line.trim();
        if let Some(summary) = row.strip_prefix("client->server:") {
            assert!(
                scenario.client.is_none(),
                "README {name}: two client sections"
            );
            scenario.client = Some(parse_direction_line(summary));
            side = Some(true);
        } else if let Some(summary) = row.strip_prefix("server->client:") {
            assert!(
                scenario.server.is_none(),
                "README {name}: two server sections"
            );
            scenario.server = Some(parse_direction_line(summary));
            side = Some(false);
        } else if row.is_empty() || row.starts_with('#') {
            // Blank separator or the table's column titles.
        } else {
            let direction = match side {
                Some(true) => scenario.client.as_mut(),
                Some(false) => scenario.server.as_mut(),
                None => None,
            }
            .unwrap_or_else(|| panic!("README {name}: row before any direction: {row:?}"));
            if let Some(count) = row.strip_prefix("packets ") {
                let (_, count) = count
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("README {name}: {row:?}"));
                direction.packet_count = parse_num(count.trim(), "packet count");
            } else if row.starts_with('p') {
                direction.packets.push(parse_packet_row(row));
            } else if row.starts_with(|c: char| c.is_ascii_digit()) {
                direction.frames.push(parse_frame_row(row));
            } else {
                panic!("README {name}: unrecognised decode row {row:?}");
            }
        }
    }
    assert!(!in_block, "README: unterminated code block");
    scenarios
}

// ---------------------------------------------------------------------------
// Decoding a capture with this crate
// ---------------------------------------------------------------------------

struct Decoded {
    /// Each frame with its offset in the stream.
    frames: Vec<(usize, Frame)>,
    packets: Vec<Packet>,
}

/// Decodes the whole capture as a receiver in sequential mode would: the
/// default `FrameDecoder`, the connection-wide id rule on every frame, and
/// one `PacketAssembler` per stream.
fn decode_capture(file: &str, bytes: &[u8]) -> Decoded {
    let decoder = FrameDecoder::default();
    let mut order = ConnectionIdOrder::new();
    let mut assemblers: HashMap<u64, PacketAssembler> = HashMap::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    let mut packets = Vec::new();
    loop {
        let offset = bytes.len() - buf.len();
        let index = frames.len();
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => panic!("{file}: frame {index} at offset {offset}: {e}"),
        };
        order
            .check(frame.id, frame.done)
            .unwrap_or_else(|e| panic!("{file}: frame {index}: {e}"));
        let assembler = assemblers.entry(frame.id.stream).or_default();
        match assembler.push(frame.clone()) {
            Ok(Some(packet)) => packets.push(packet),
            Ok(None) => {}
            Err(e) => panic!("{file}: frame {index}: {e}"),
        }
        frames.push((offset, frame));
    }
    assert!(
        buf.is_empty(),
        "{file}: {} trailing bytes do not form a frame",
        buf.len()
    );
    for (stream, assembler) in &assemblers {
        assert_eq!(
            assembler.buffered(),
            0,
            "{file}: stream {stream} ends with a half-assembled packet"
        );
    }
    Decoded { frames, packets }
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

fn check_frame(file: &str, (offset, frame): &(usize, Frame), row: &FrameRow) {
    let at = format!("{file}: frame {}", row.index);
    assert_eq!(*offset, row.offset, "{at}: offset");

    let mut header = Vec::new();
    frame.append_to(&mut header);
    header.truncate(header.len() - frame.data.len());
    assert_eq!(
        hex_encode(&header),
        hex_encode(&row.header),
        "{at}: header bytes"
    );
    assert_eq!(frame.kind.value(), row.kind, "{at}: kind value");
    assert_eq!(frame.kind.to_string(), row.kind_name, "{at}: kind name");
    assert_eq!(frame.id.stream, row.stream, "{at}: stream");
    assert_eq!(frame.id.message, row.message, "{at}: message");
    assert_eq!(frame.done, row.done, "{at}: done");
    assert_eq!(frame.control, row.control, "{at}: control");
    assert_eq!(frame.data.len(), row.len, "{at}: data length");

    let shown = row.data_prefix.len();
    assert!(shown <= 16, "{at}: README shows more than 16 data bytes");
    assert_eq!(
        row.truncated,
        row.len > shown,
        "{at}: README `..` marker disagrees with len {}",
        row.len
    );
    assert_eq!(
        shown,
        row.len.min(16),
        "{at}: README shows {shown} of {} data bytes",
        row.len
    );
    assert_eq!(
        hex_encode(&frame.data[..shown]),
        hex_encode(&row.data_prefix),
        "{at}: leading data bytes"
    );
    if let Some(rpc) = &row.rpc {
        assert_eq!(
            frame.kind,
            Kind::INVOKE,
            "{at}: an rpc name on a non-Invoke frame"
        );
        assert_eq!(
            std::str::from_utf8(&frame.data).ok(),
            Some(rpc.as_str()),
            "{at}: rpc name"
        );
    }
}

fn check_packet(file: &str, packet: &Packet, row: &PacketRow) {
    let at = format!("{file}: packet p{}", row.index);
    assert_eq!(packet.id.stream, row.stream, "{at}: stream");
    assert_eq!(packet.id.message, row.message, "{at}: message");
    assert_eq!(packet.kind.value(), row.kind, "{at}: kind value");
    assert_eq!(packet.kind.to_string(), row.kind_name, "{at}: kind name");
    assert_eq!(packet.control, row.control, "{at}: control");
    assert_eq!(packet.data.len(), row.len, "{at}: length");

    let description = row.description.as_str();
    if packet.kind == Kind::INVOKE {
        let rpc = description
            .strip_prefix("rpc ")
            .and_then(quoted)
            .unwrap_or_else(|| panic!("{at}: Invoke description {description:?} has no rpc"));
        assert_eq!(
            std::str::from_utf8(&packet.data).ok(),
            Some(rpc.as_str()),
            "{at}: rpc name"
        );
    } else if packet.kind == Kind::ERROR {
        // `error code=42 (8-byte big-endian ...) message="boom"`
        let code = description
            .split_once("code=")
            .map(|(_, rest)| take_token(rest).0)
            .unwrap_or_else(|| panic!("{at}: Error description {description:?} has no code"));
        let message = description
            .split_once("message=")
            .and_then(|(_, rest)| quoted(rest))
            .unwrap_or_else(|| panic!("{at}: Error description {description:?} has no message"));
        let decoded = CodedError::decode(&packet.data);
        assert_eq!(
            decoded.code(),
            parse_num::<u64>(code, "error code"),
            "{at}: code"
        );
        assert_eq!(decoded.message(), message, "{at}: error message");
    } else if packet.kind == Kind::INVOKE_METADATA {
        // `metadata {"alpha": "first", "beta": "second"} (wire order)`
        let body = description
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("{at}: metadata description {description:?}"));
        let expected: BTreeMap<String, String> = body
            .split(", ")
            .map(|pair| {
                let (key, value) = pair
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("{at}: metadata pair {pair:?}"));
                (
                    key.trim_matches('"').to_owned(),
                    value.trim_matches('"').to_owned(),
                )
            })
            .collect();
        let decoded = decode_metadata(&packet.data)
            .unwrap_or_else(|e| panic!("{at}: metadata does not decode: {e}"));
        assert_eq!(decoded, expected, "{at}: metadata");
    } else if description == "(empty body)" {
        assert!(packet.data.is_empty(), "{at}: body should be empty");
    }
}

fn check_direction(file: &str, bytes: &[u8], expected: &Direction) {
    assert_eq!(bytes.len(), expected.total_bytes, "{file}: byte count");
    let decoded = decode_capture(file, bytes);

    assert_eq!(
        expected.frames.len(),
        expected.frame_count,
        "{file}: README frame rows"
    );
    assert_eq!(
        decoded.frames.len(),
        expected.frame_count,
        "{file}: frame count"
    );
    for (i, (frame, row)) in decoded.frames.iter().zip(&expected.frames).enumerate() {
        assert_eq!(row.index, i, "{file}: README frame numbering");
        check_frame(file, frame, row);
    }

    assert_eq!(
        expected.packets.len(),
        expected.packet_count,
        "{file}: README packet rows"
    );
    assert_eq!(
        decoded.packets.len(),
        expected.packet_count,
        "{file}: packet count"
    );
    for (i, (packet, row)) in decoded.packets.iter().zip(&expected.packets).enumerate() {
        assert_eq!(row.index, i, "{file}: README packet numbering");
        check_packet(file, packet, row);
    }

    // Re-encoding the frames gives back the capture byte for byte.
    let mut encoded = Vec::with_capacity(bytes.len());
    for (_, frame) in &decoded.frames {
        frame.append_to(&mut encoded);
    }
    assert!(
        encoded == bytes,
        "{file}: re-encoded frames differ from the capture"
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

fn load_readme(dir: &Path) -> BTreeMap<String, Scenario> {
    let path = dir.join("README.md");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_readme(&text)
}

#[test]
fn every_capture_matches_the_readme_decode() {
    let dir = vectors_dir();
    let scenarios = load_readme(&dir);
    let files = hex_files(&dir);
    assert_eq!(
        files.len(),
        EXPECTED_HEX_FILES,
        "{}: expected {EXPECTED_HEX_FILES} .hex files",
        dir.display()
    );

    let mut checked = BTreeSet::new();
    for path in &files {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let (name, side) = split_file_name(path);
        let scenario = scenarios
            .get(&name)
            .unwrap_or_else(|| panic!("{file}: no `### {name}` section in README.md"));
        let expected = if side == "client" {
            scenario.client.as_ref()
        } else {
            scenario.server.as_ref()
        }
        .unwrap_or_else(|| panic!("{file}: README.md has no decode for this direction"));
        check_direction(&file, &read_hex_file(path), expected);
        assert!(checked.insert((name, side)), "{file}: checked twice");
    }

    // Every documented scenario has both of its files, and nothing else.
    assert_eq!(scenarios.len(), EXPECTED_SCENARIOS, "README scenario count");
    for (name, scenario) in &scenarios {
        assert!(
            scenario.client.is_some(),
            "README {name}: no client->server decode"
        );
        assert!(
            scenario.server.is_some(),
            "README {name}: no server->client decode"
        );
        for side in ["client", "server"] {
            assert!(
                checked.contains(&(name.clone(), side.to_owned())),
                "{name}.{side}.hex is missing"
            );
        }
    }
}

#[test]
fn empty_capture_is_zero_frames() {
    let dir = vectors_dir();
    let path = dir.join("cancel_hard.server.hex");
    assert!(path.is_file(), "{} is missing", path.display());
    let bytes = read_hex_file(&path);
    assert!(bytes.is_empty());
    let decoded = decode_capture("cancel_hard.server.hex", &bytes);
    assert!(decoded.frames.is_empty() && decoded.packets.is_empty());

    let scenarios = load_readme(&dir);
    let server = scenarios["cancel_hard"].server.as_ref().expect("decode");
    assert_eq!(
        (server.total_bytes, server.frame_count, server.packet_count),
        (0, 0, 0)
    );
}

/// Spot checks of the parser itself, so that a README parsed into nothing
/// cannot pass silently.
#[test]
fn readme_parser_reads_the_rows() {
    let scenarios = load_readme(&vectors_dir());
    let small = &scenarios["unary_small"];
    let client = small.client.as_ref().expect("client decode");
    assert_eq!(
        (client.total_bytes, client.frame_count, client.packet_count),
        (42, 4, 4)
    );
    let invoke = &client.frames[0];
    assert_eq!(invoke.header, [0x03, 0x01, 0x01, 0x18]);
    assert_eq!(
        (invoke.kind_name.as_str(), invoke.kind, invoke.len),
        ("Invoke", 1, 24)
    );
    assert!(invoke.truncated);
    assert_eq!(invoke.data_prefix, b"/service.Service".to_vec());
    assert_eq!(invoke.rpc.as_deref(), Some("/service.Service/Method1"));
    let close = &client.frames[3];
    assert_eq!(
        (close.offset, close.len, close.data_prefix.len()),
        (38, 0, 0)
    );
    assert_eq!(client.packets[1].description, "In{in: 5}");

    let soft = scenarios["cancel_soft"]
        .client
        .as_ref()
        .expect("client decode");
    let cancel = &soft.frames[3];
    assert_eq!((cancel.kind, cancel.done, cancel.control), (4, true, true));
    assert_eq!(cancel.header, [0x89, 0x01, 0x04, 0x00]);
    assert!(soft.packets[3].control);

    let split = scenarios["unary_split_3frames"]
        .client
        .as_ref()
        .expect("client decode");
    assert_eq!(split.frames[3].offset, 131_112);
    assert_eq!(split.frames[3].header, [0x05, 0x01, 0x02, 0xf6, 0x93, 0x01]);
    assert_eq!(split.packets[1].len, 150_006);
}

#[test]
fn captures_decode_identically_in_small_chunks() {
    // The same bytes fed 7 at a time give the same frames as one shot.
    let dir = vectors_dir();
    for name in [
        "unary_metadata.client.hex",
        "cancel_soft.client.hex",
        "bidi_3.server.hex",
    ] {
        let path = dir.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        let bytes = read_hex_file(&path);
        let whole = decode_capture(name, &bytes);

        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = decoder.decode(&mut buf).expect("valid capture") {
                frames.push(frame);
            }
        }
        assert!(buf.is_empty(), "{name}: leftover bytes");
        let expected: Vec<Frame> = whole.frames.into_iter().map(|(_, f)| f).collect();
        assert_eq!(frames, expected, "{name}: chunked decode differs");
    }
}
