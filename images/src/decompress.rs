//! Streaming decompression of layers and archives: gzip (flate2) and zstd (ruzstd, pure
//! Rust, so the agent cross-compiles without a C library).

use crate::oci::Compression;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use std::io::{self, BufRead, BufReader, Read};

/// Wraps `reader` in the decoder `compression` calls for. Multi-member gzip and
/// multi-frame zstd streams are read to their end, as parallel compressors write them.
pub fn decompress<'a>(reader: impl Read + 'a, compression: Compression) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ZstdReader::new(reader)),
    }
}

/// Decodes every zstd frame in a stream, one after another.
pub struct ZstdReader<R: Read> {
    state: ZstdState<R>,
}

enum ZstdState<R: Read> {
    BetweenFrames(BufReader<R>),
    InFrame(Box<StreamingDecoder<BufReader<R>, FrameDecoder>>),
    Failed,
}

impl<R: Read> ZstdReader<R> {
    pub fn new(reader: R) -> Self {
        ZstdReader { state: ZstdState::BetweenFrames(BufReader::new(reader)) }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, ZstdState::Failed) {
                ZstdState::BetweenFrames(mut source) => {
                    if source.fill_buf()?.is_empty() {
                        self.state = ZstdState::BetweenFrames(source);
                        return Ok(0);
                    }
                    let decoder = StreamingDecoder::new(source)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
                    self.state = ZstdState::InFrame(Box::new(decoder));
                }
                ZstdState::InFrame(mut decoder) => {
                    let n = decoder.read(buf)?;
                    if n == 0 {
                        self.state = ZstdState::BetweenFrames(decoder.into_inner());
                        continue;
                    }
                    self.state = ZstdState::InFrame(decoder);
                    return Ok(n);
                }
                ZstdState::Failed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zstd stream failed to decode earlier",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};

    #[test]
    fn zstd_multi_frame_round_trip() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let b = b"second frame".to_vec();
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        stream.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut out = Vec::new();
        decompress(&stream[..], Compression::Zstd).read_to_end(&mut out).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut out = Vec::new();
        let err =
            decompress(&b"\x28\xb5\x2f\xfdnot really zstd"[..], Compression::Zstd).read_to_end(&mut out);
        assert!(err.is_err());
        let err = decompress(&b"\x1f\x8bnot really gzip"[..], Compression::Gzip).read_to_end(&mut out);
        assert!(err.is_err());
    }
}
