//! Opening an answer's `Content-Encoding` as it streams, so the scrubber sees the bytes the
//! agent's client will decode: every layer of the list (`identity`, `gzip`, `x-gzip`,
//! `deflate` with or without its zlib wrapper), undone in the reverse of the order the
//! upstream applied them. Any other coding cannot be looked into, so the answer is refused.

use std::io::Write as _;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// One coding being undone.
enum Layer {
    Gzip(GzDecoder<Vec<u8>>),
    Zlib(ZlibDecoder<Vec<u8>>),
    /// Raw deflate (RFC 1951), which some servers send as `deflate`.
    Raw(DeflateDecoder<Vec<u8>>),
    /// `deflate` before its first two bytes say whether a zlib header is there.
    Deflate(Vec<u8>),
}

impl Layer {
    /// Feeds bytes coded with this layer; returns what they decode to so far.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Layer::Gzip(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Zlib(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Raw(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Deflate(start) => {
                start.extend_from_slice(data);
                if start.len() < 2 {
                    return Ok(Vec::new());
                }
                // RFC 1950: compression method 8, and the header's 16 bits a multiple of 31.
                let zlib = start[0] & 0x0f == 8
                    && (u16::from(start[0]) << 8 | u16::from(start[1])) % 31 == 0;
                let start = std::mem::take(start);
                *self = if zlib {
                    Layer::Zlib(ZlibDecoder::new(Vec::new()))
                } else {
                    Layer::Raw(DeflateDecoder::new(Vec::new()))
                };
                self.push(&start)
            }
        }
    }

    /// The end of this layer's bytes.
    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Layer::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Raw(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Layer::Deflate(start) if start.is_empty() => Ok(Vec::new()),
            Layer::Deflate(_) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a deflate body of one byte",
            )),
        }
    }
}

/// The layers of one answer, in the order they are undone.
pub struct Decoder {
    layers: Vec<Layer>,
}

impl Decoder {
    /// The decoder for an answer's `Content-Encoding` values (each a comma list, applied
    /// in order): `Ok(None)` when there is nothing to undo (none, or only `identity`), or
    /// `Err` with the first coding that cannot be undone.
    pub fn for_encodings<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Decoder>, String> {
        let mut applied = Vec::new();
        for value in values {
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii().to_ascii_lowercase();
                match &coding[..] {
                    b"" | b"identity" => {}
                    b"gzip" | b"x-gzip" => applied.push(Layer::Gzip(GzDecoder::new(Vec::new()))),
                    b"deflate" => applied.push(Layer::Deflate(Vec::new())),
                    other => return Err(String::from_utf8_lossy(other).into_owned()),
                }
            }
        }
        applied.reverse();
        Ok((!applied.is_empty()).then_some(Decoder { layers: applied }))
    }

    /// Feeds coded bytes; returns what they decode to so far.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut bytes = data.to_vec();
        for layer in &mut self.layers {
            let decoded = layer.push(&bytes);
            // What one layer hands the next may hold an echoed key.
            zeroize::Zeroize::zeroize(&mut bytes);
            bytes = decoded?;
        }
        Ok(bytes)
    }

    /// The end of the coded bytes: what is left, each layer finished in turn.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for layer in &mut self.layers {
            let mut out = if bytes.is_empty() {
                Vec::new()
            } else {
                layer.push(&bytes)?
            };
            zeroize::Zeroize::zeroize(&mut bytes);
            out.extend_from_slice(&layer.finish()?);
            bytes = out;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `coded` fed in chunks of `step` bytes.
    fn decode(header: &str, coded: &[u8], step: usize) -> Vec<u8> {
        let mut d = Decoder::for_encodings([header.as_bytes()])
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for chunk in coded.chunks(step) {
            out.extend(d.push(chunk).unwrap());
        }
        out.extend(d.finish().unwrap());
        out
    }

    #[test]
    fn every_layer_of_a_list_is_undone_in_reverse_order() {
        let plain = b"{\"authorization\": \"Bearer sk-proj-secret\"}".repeat(20);
        for step in [1, 7, 4096] {
            assert_eq!(decode("gzip", &gzip(&plain), step), plain);
            assert_eq!(decode("identity, gzip", &gzip(&plain), step), plain);
            assert_eq!(decode("gzip, gzip", &gzip(&gzip(&plain)), step), plain);
            assert_eq!(decode("deflate, x-gzip", &gzip(&zlib(&plain)), step), plain);
            assert_eq!(decode("Deflate", &raw_deflate(&plain), step), plain);
            assert_eq!(decode("deflate", &zlib(&plain), step), plain);
        }
        let mut d = Decoder::for_encodings(["gzip".as_bytes(), b"deflate".as_slice()])
            .unwrap()
            .unwrap();
        let mut out = d.push(&zlib(&gzip(&plain))).unwrap();
        out.extend(d.finish().unwrap());
        assert_eq!(out, plain, "two header lines are one list");
    }

    #[test]
    fn nothing_to_undo_and_codings_that_cannot_be_undone_are_told_apart() {
        assert!(matches!(Decoder::for_encodings([]), Ok(None)));
        assert!(matches!(
            Decoder::for_encodings([b"identity".as_slice()]),
            Ok(None)
        ));
        for (header, refused) in [
            ("br", "br"),
            ("gzip, zstd", "zstd"),
            ("compress", "compress"),
        ] {
            match Decoder::for_encodings([header.as_bytes()]) {
                Err(name) => assert_eq!(name, refused),
                Ok(_) => panic!("{header} was accepted"),
            }
        }
    }
}
