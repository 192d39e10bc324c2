//! The `frames` harness: the frame decoder and every frame type's decoding (F1–F3).

use crate::wire::{
    self, AgentFrame, BlobReply, EnrolReply, FrameDecoder, HubFrame, MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, RenewReply, StreamOpen, WireFrame,
};
use std::fmt::Debug;

/// Feeds `data[1..]` to a [`FrameDecoder`] in pieces chosen by `data[0]` and checks
/// F1–F3 on everything that comes out.
pub fn frames(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let in_pieces = decode_stream(stream, Pieces::new(seed, stream.len()));
    let in_one = decode_stream(stream, std::iter::once(stream.len()));
    assert_eq!(in_pieces, in_one, "F3: the pieces changed what the decoder returned");
    for body in &in_one.bodies {
        round_trip::<StreamOpen>(body);
        round_trip::<HubFrame>(body);
        round_trip::<AgentFrame>(body);
        round_trip::<EnrolReply>(body);
        round_trip::<BlobReply>(body);
        round_trip::<RenewReply>(body);
    }
}

/// Everything a decoder returned for one stream: bodies up to the first error, then
/// the error, or else how many bytes were left over.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    bodies: Vec<Vec<u8>>,
    error: Option<String>,
    leftover: usize,
}

fn decode_stream(stream: &[u8], piece_lens: impl Iterator<Item = usize>) -> Decoded {
    let mut decoder = FrameDecoder::new();
    let mut out = Decoded { bodies: vec![], error: None, leftover: 0 };
    let mut rest = stream;
    for len in piece_lens {
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        decoder.push(piece);
        assert!(
            decoder.buffered() <= MAX_FRAME_BYTES + 4 + piece.len(),
            "F2: the decoder holds {} bytes after a piece of {}",
            decoder.buffered(),
            piece.len()
        );
        loop {
            match decoder.next_body() {
                Ok(Some(body)) => {
                    assert!(body.len() <= MAX_FRAME_BYTES, "F2: a body of {} bytes", body.len());
                    out.bodies.push(body);
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            }
        }
        assert!(decoder.buffered() < MAX_FRAME_BYTES + 4, "F2: a whole frame left undelivered");
        if rest.is_empty() {
            break;
        }
    }
    out.leftover = decoder.buffered();
    let delivered: usize = out.bodies.iter().map(|b| 4 + b.len()).sum();
    assert_eq!(delivered + out.leftover, stream.len(), "F3: bytes lost or invented");
    out
}

/// Piece sizes drawn from a small generator seeded by one byte: powers of two from 1
/// to 4096 for the largest piece, so both byte-by-byte and bulk reads occur.
struct Pieces {
    state: u32,
    max: u32,
    remaining: usize,
}

impl Pieces {
    fn new(seed: u8, total: usize) -> Pieces {
        Pieces {
            state: u32::from(seed).wrapping_mul(0x9E37_79B9) | 1,
            max: 1 << (seed % 13),
            remaining: total,
        }
    }
}

impl Iterator for Pieces {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        // xorshift32: deterministic, so a crash replays exactly.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        // An empty read now and then: the decoder must take those too.
        let len = if self.state & 0xF == 0 { 0 } else { 1 + (self.state >> 4) % self.max };
        let len = (len as usize).min(self.remaining);
        self.remaining -= len;
        Some(len)
    }
}

/// F1 for one body read as `T`.
fn round_trip<T: WireFrame + PartialEq + Debug>(body: &[u8]) {
    let Ok((version, value)) = wire::decode_frame_body_versioned::<T>(body) else { return };
    assert!((MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version), "F1: read at version {version}");
    let frame = match wire::encode_frame_for(version, &value) {
        Ok(frame) => frame,
        // Re-expressing for an older version may lengthen a frame that was already
        // at the limit; nothing else may fail to encode.
        Err(e) => {
            assert!(body.len() + 64 > MAX_FRAME_BYTES, "F1: {value:?} decoded but does not encode: {e}");
            return;
        }
    };
    let (again_version, again) = wire::decode_frame_body_versioned::<T>(&frame[4..])
        .unwrap_or_else(|e| panic!("F1: {value:?} re-encoded to bytes that do not decode: {e}"));
    assert_eq!(again_version, version, "F1: re-encoded at another version");
    // A reader accepts any variant at any supported version (the enums only grew), but
    // a writer answering an older peer re-expresses what that version lacks.
    assert_eq!(again, value.for_version(version), "F1: the value changed on a round trip");
    let canonical = wire::encode_frame_for(version, &again).expect("F1: it encoded once");
    assert_eq!(canonical, frame, "F1: two encodings of one value");
}
