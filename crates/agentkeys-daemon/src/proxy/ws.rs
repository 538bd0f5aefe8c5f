//! The upstream's side of a WebSocket on its way to the agent, scrubbed message by message:
//! its frames are parsed (server to client: unmasked; fragmented messages and the control
//! frames between their fragments included), each data message's payload streams through
//! one replacer across all its frames, each control frame's payload (a close's reason, a
//! ping's or pong's data) is scrubbed whole, and everything is framed again with the new
//! lengths. RFC 6455 §5.4 lets an intermediary change a message's fragmentation when no
//! extension is in use, which the proxy makes sure of by refusing them at the upgrade; a
//! frame with a reserved bit set (compressed after all) cannot be checked and ends the
//! connection.

use std::sync::Arc;

use bytes::Bytes;

use super::scrub::{Replacer, Table};

/// Why a stream of frames cannot be passed on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A reserved bit set: an extension (compression) the proxy did not agree to.
    #[error("the upstream sent a WebSocket frame with a reserved bit set (an extension)")]
    Extension,
    /// An opcode RFC 6455 does not define.
    #[error("the upstream sent a WebSocket frame with an unknown opcode")]
    Opcode,
    /// A continuation without a message, a new message inside one, or a control frame that
    /// is fragmented or longer than 125 bytes.
    #[error("the upstream's WebSocket frames break the protocol")]
    Protocol,
}

/// A frame being read: what its header said, and how much of its payload is still to come.
struct Head {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far, modulo 4 (where the mask goes on).
    phase: usize,
    left: u64,
}

/// A data message being passed on.
struct Message {
    replacer: Replacer,
    /// Text (1) or binary (2): the first frame out carries it, the others are
    /// continuations.
    opcode: u8,
    started: bool,
}

/// The upstream's frames in, scrubbed frames out.
pub struct Reframer {
    table: Arc<Table>,
    /// The header of the next frame, as far as it has come.
    header: Vec<u8>,
    frame: Option<Head>,
    message: Option<Message>,
    /// A control frame's payload, as far as it has come.
    control: Vec<u8>,
}

/// Frames `payload` as one unmasked frame (server to client).
fn frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(u8::from(fin) << 7 | opcode);
    let n = payload.len();
    match (u8::try_from(n), u16::try_from(n)) {
        (Ok(small), _) if small <= 125 => out.push(small),
        (_, Ok(mid)) => {
            out.push(126);
            out.extend_from_slice(&mid.to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// How long a frame header is, from its first two bytes.
fn header_len(first_two: &[u8]) -> usize {
    let ext = match first_two[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl Reframer {
    /// Frames scrubbed of `table`'s patterns.
    pub fn new(table: Arc<Table>) -> Reframer {
        Reframer {
            table,
            header: Vec::with_capacity(14),
            frame: None,
            message: None,
            control: Vec::new(),
        }
    }

    /// Takes the upstream's next bytes; appends to `out` the frames that can be passed on.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        while !data.is_empty() {
            let Some(head) = self.frame.as_mut() else {
                // A header: two bytes, then as many more as they say.
                let want = if self.header.len() < 2 {
                    2
                } else {
                    header_len(&self.header)
                };
                let take = (want - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.header.len() == 2 && header_len(&self.header) > 2 {
                    continue;
                }
                if self.header.len() == want {
                    self.start_frame(out)?;
                }
                continue;
            };
            let take = usize::try_from(head.left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let mut chunk = data[..take].to_vec();
            data = &data[take..];
            if let Some(mask) = head.mask {
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b ^= mask[(head.phase + i) % 4];
                }
            }
            head.phase = (head.phase + take) % 4;
            head.left -= u64::try_from(take).unwrap_or(u64::MAX);
            let (done, fin, control) = (head.left == 0, head.fin, head.opcode >= 8);
            if control {
                self.control.extend_from_slice(&chunk);
            } else if let Some(m) = self.message.as_mut() {
                let scrubbed = m.replacer.push(&Bytes::from(std::mem::take(&mut chunk)));
                if !scrubbed.is_empty() {
                    let opcode = if m.started { 0 } else { m.opcode };
                    m.started = true;
                    frame(out, false, opcode, &scrubbed);
                }
            }
            // The payload may hold an echoed key: wiped, not just freed.
            zeroize::Zeroize::zeroize(&mut chunk);
            if done {
                self.end_frame(fin, out);
            }
        }
        Ok(())
    }

    /// Reads a complete header: checks it, and ends the frame at once if it is empty.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let h = std::mem::take(&mut self.header);
        let (fin, rsv, opcode) = (h[0] & 0x80 != 0, h[0] & 0x70, h[0] & 0x0f);
        let mut at = 2;
        let len = match h[1] & 0x7f {
            126 => {
                at += 2;
                u64::from(u16::from_be_bytes([h[2], h[3]]))
            }
            127 => {
                at += 8;
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        if rsv != 0 {
            return Err(FrameError::Extension);
        }
        match opcode {
            0 if self.message.is_none() => return Err(FrameError::Protocol),
            1 | 2 if self.message.is_some() => return Err(FrameError::Protocol),
            1 | 2 => {
                self.message = Some(Message {
                    replacer: Replacer::new(self.table.clone()),
                    opcode,
                    started: false,
                });
            }
            8..=10 if !fin || len > 125 => return Err(FrameError::Protocol),
            0 | 8..=10 => {}
            _ => return Err(FrameError::Opcode),
        }
        self.frame = Some(Head {
            fin,
            opcode,
            mask,
            phase: 0,
            left: len,
        });
        if len == 0 {
            self.end_frame(fin, out);
        }
        Ok(())
    }

    /// A frame's payload is complete: a control frame goes out scrubbed whole, the last
    /// frame of a message with whatever its replacer still held.
    fn end_frame(&mut self, fin: bool, out: &mut Vec<u8>) {
        let Some(head) = self.frame.take() else {
            return;
        };
        if head.opcode >= 8 {
            let mut payload = std::mem::take(&mut self.control);
            // A close keeps its status code; its reason (and a ping's or pong's data) is
            // scrubbed, and cut back to the 125 bytes a control frame may carry, at a
            // character's boundary (a close reason is UTF-8).
            let keep = if head.opcode == 8 {
                payload.len().min(2)
            } else {
                0
            };
            let mut sent = payload[..keep].to_vec();
            match self.table.scrub_whole(&payload[keep..]) {
                Some(scrubbed) => sent.extend_from_slice(&scrubbed),
                None => sent.extend_from_slice(&payload[keep..]),
            }
            let mut end = sent.len().min(125);
            while end > keep && std::str::from_utf8(&sent[keep..end]).is_err() {
                end -= 1;
            }
            frame(out, true, head.opcode, &sent[..end]);
            zeroize::Zeroize::zeroize(&mut payload);
            return;
        }
        if !fin {
            return;
        }
        if let Some(mut m) = self.message.take() {
            let rest = m.replacer.finish();
            let opcode = if m.started { 0 } else { m.opcode };
            frame(out, true, opcode, &rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"ws-key-0123456789abcdef";
    const PLACEHOLDER: &[u8] = b"Zq3Wm8Rt5Yp2Lk7Hd4Jf9Gs6Na1Bc0Ve";

    /// A parsed frame: (fin, opcode, payload).
    type Parsed = (bool, u8, Vec<u8>);

    /// Parses unmasked frames (as a client would).
    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let n = header_len(bytes);
            let len = match bytes[1] & 0x7f {
                126 => usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
                127 => {
                    usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap()
                }
                l => usize::from(l),
            };
            assert_eq!(bytes[1] & 0x80, 0, "frames to the client are unmasked");
            frames.push((
                bytes[0] & 0x80 != 0,
                bytes[0] & 0x0f,
                bytes[n..n + len].to_vec(),
            ));
            bytes = &bytes[n + len..];
        }
        frames
    }

    /// The messages a client assembles: (opcode, payload) of each data message and each
    /// control frame, in order.
    fn messages(frames: &[Parsed]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut open: Option<(u8, Vec<u8>)> = None;
        for (fin, opcode, payload) in frames {
            if *opcode >= 8 {
                out.push((*opcode, payload.clone()));
                continue;
            }
            let m = open.get_or_insert_with(|| (*opcode, Vec::new()));
            m.1.extend_from_slice(payload);
            if *fin {
                out.push(open.take().unwrap());
            }
        }
        out
    }

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![
            u8::from(fin) << 7 | opcode,
            0x80 | u8::try_from(payload.len()).unwrap(),
        ];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn upstream() -> Vec<u8> {
        let mut up = Vec::new();
        frame(&mut up, true, 1, &[b"Bearer ".as_slice(), KEY].concat());
        // A message in three fragments, split inside the key, a ping between them.
        let long = [b"key=".as_slice(), KEY, b" end"].concat();
        frame(&mut up, false, 1, &long[..10]);
        frame(&mut up, true, 9, b"are you there?");
        frame(&mut up, false, 0, &long[10..20]);
        frame(&mut up, true, 0, &long[20..]);
        // A large binary message (16-bit length) with the key in it, masked for once.
        let big = [vec![b'.'; 300], KEY.to_vec(), vec![b'.'; 300]].concat();
        frame(&mut up, true, 2, &big);
        up.extend(masked(true, 1, &[b"m:".as_slice(), KEY].concat()));
        // An empty message, then a close whose reason holds the key.
        frame(&mut up, true, 1, b"");
        frame(
            &mut up,
            true,
            8,
            &[&4000u16.to_be_bytes()[..], b"bye ", KEY].concat(),
        );
        up
    }

    fn through(up: &[u8], step: usize) -> Vec<u8> {
        let table = Table::echoes(&[(KEY, PLACEHOLDER)]).unwrap();
        let mut r = Reframer::new(table);
        let mut out = Vec::new();
        for chunk in up.chunks(step) {
            r.push(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn every_message_and_control_frame_is_scrubbed_and_framed_again() {
        for step in [1, 2, 3, 7, 64, 100_000] {
            let out = through(&upstream(), step);
            let found = messages(&parse(&out));
            let big = [vec![b'.'; 300], PLACEHOLDER.to_vec(), vec![b'.'; 300]].concat();
            assert_eq!(
                found,
                [
                    (1, [b"Bearer ".as_slice(), PLACEHOLDER].concat()),
                    (9, b"are you there?".to_vec()),
                    (1, [b"key=".as_slice(), PLACEHOLDER, b" end"].concat()),
                    (2, big),
                    (1, [b"m:".as_slice(), PLACEHOLDER].concat()),
                    (1, Vec::new()),
                    (
                        8,
                        [&4000u16.to_be_bytes()[..], b"bye ", PLACEHOLDER].concat()
                    ),
                ],
                "step {step}"
            );
            assert!(!out.windows(KEY.len()).any(|w| w == KEY));
        }
    }

    #[test]
    fn a_control_frame_made_longer_is_cut_to_125_bytes() {
        let mut up = Vec::new();
        let reason = [b"x".repeat(95).as_slice(), KEY].concat();
        frame(
            &mut up,
            true,
            8,
            &[&1000u16.to_be_bytes()[..], &reason].concat(),
        );
        let found = parse(&through(&up, 5));
        assert_eq!(found.len(), 1);
        let (fin, opcode, payload) = &found[0];
        assert!(*fin && *opcode == 8 && payload.len() == 125);
        assert!(payload.starts_with(&1000u16.to_be_bytes()));
        assert!(!payload.windows(8).any(|w| KEY.windows(8).any(|k| k == w)));
    }

    #[test]
    fn frames_that_cannot_be_checked_are_refused() {
        let table = Table::echoes(&[(KEY, PLACEHOLDER)]).unwrap();
        let refused = |bytes: &[u8]| {
            let mut r = Reframer::new(table.clone());
            r.push(bytes, &mut Vec::new()).err()
        };
        // Compressed (RSV1), a continuation out of nowhere, a fragmented ping, opcode 3.
        assert!(matches!(
            refused(&[0xc1, 0x01, b'x']),
            Some(FrameError::Extension)
        ));
        assert!(matches!(
            refused(&[0x80, 0x01, b'x']),
            Some(FrameError::Protocol)
        ));
        assert!(matches!(
            refused(&[0x09, 0x01, b'x']),
            Some(FrameError::Protocol)
        ));
        assert!(matches!(
            refused(&[0x83, 0x01, b'x']),
            Some(FrameError::Opcode)
        ));
        let mut two = Vec::new();
        frame(&mut two, false, 1, b"a");
        frame(&mut two, true, 1, b"b");
        assert!(matches!(refused(&two), Some(FrameError::Protocol)));
    }
}
