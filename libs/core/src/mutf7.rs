//! Modified UTF-7, the encoding of IMAP mailbox names (RFC 3501 §5.1.3).
//!
//! Printable US-ASCII (0x20–0x7e) stands for itself, except `&`, which is written `&-`.
//! Everything else is UTF-16 (big endian), written in a modified base64 (`,` instead of
//! `/`, no `=` padding) between `&` and `-`.
//!
//! [`encode`] produces the canonical form. [`decode`] is strict: it accepts exactly the
//! canonical form, so `encode(&decode(raw)?) == raw`. [`decode_lenient`] also accepts what
//! real servers send that a strict decoder refuses (case BR-04: Yandex puts a printable `&`
//! inside the base64 run). A client must still address a folder by the raw bytes the server
//! listed, never by a re-encoding of the decoded name.

/// Why a mailbox name is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mutf7Error {
    /// An `&` without the closing `-`.
    #[error("unterminated base64 run starting at byte {offset}")]
    Unterminated {
        /// Position of the `&`.
        offset: usize,
    },
    /// A byte that may not appear outside a base64 run (control or 8-bit).
    #[error("invalid byte 0x{byte:02x} at byte {offset}")]
    InvalidByte {
        /// Position of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A byte inside a base64 run that is not in the modified base64 alphabet.
    #[error("invalid modified base64 character 0x{byte:02x} at byte {offset}")]
    InvalidBase64 {
        /// Position of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// The run's bits do not end on a UTF-16 code unit (a whole superfluous character).
    #[error("base64 run at byte {offset} ends inside a UTF-16 code unit")]
    PartialCodeUnit {
        /// Position of the run's `&`.
        offset: usize,
    },
    /// The bits after the last code unit are not zero.
    #[error("base64 run at byte {offset} has non-zero padding bits")]
    NonZeroPadding {
        /// Position of the run's `&`.
        offset: usize,
    },
    /// A high surrogate without its low surrogate, or the reverse.
    #[error("lone UTF-16 surrogate in the base64 run at byte {offset}")]
    LoneSurrogate {
        /// Position of the run's `&`.
        offset: usize,
    },
    /// Printable ASCII inside a base64 run ("MUST NOT" in RFC 3501 §5.1.3).
    #[error("printable ASCII encoded in the base64 run at byte {offset}")]
    EncodedPrintable {
        /// Position of the run's `&`.
        offset: usize,
    },
    /// A base64 run directly after another one; the canonical form has one run.
    #[error("base64 run at byte {offset} directly follows another run")]
    AdjacentRuns {
        /// Position of the second run's `&`.
        offset: usize,
    },
}

/// `Result` with a [`Mutf7Error`].
pub type Result<T, E = Mutf7Error> = std::result::Result<T, E>;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn is_printable(c: u32) -> bool {
    (0x20..=0x7e).contains(&c)
}

fn base64_value(byte: u8) -> Option<u32> {
    let value = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b',' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

/// Encodes a display name into canonical modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let mut units: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_printable(u32::from(c)) {
            if !units.is_empty() {
                push_run(&mut out, &units);
                units.clear();
            }
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    if !units.is_empty() {
        push_run(&mut out, &units);
    }
    out
}

/// Appends `&<modified base64 of units>-`.
fn push_run(out: &mut String, units: &[u16]) {
    out.push('&');
    let mut bits: u32 = 0;
    let mut count = 0u32;
    for &unit in units {
        bits = (bits << 16) | u32::from(unit);
        count += 16;
        while count >= 6 {
            count -= 6;
            out.push(char::from(ALPHABET[((bits >> count) & 0x3f) as usize]));
        }
        // Keep only the bits not yet written so the accumulator cannot overflow.
        bits &= (1 << count) - 1;
    }
    if count > 0 {
        out.push(char::from(
            ALPHABET[((bits << (6 - count)) & 0x3f) as usize],
        ));
    }
    out.push('-');
}

/// Which non-canonical forms a decoder tolerates.
#[derive(Clone, Copy)]
struct Tolerance {
    /// Printable ASCII inside base64, adjacent runs, non-zero padding bits, raw UTF-8.
    lenient: bool,
}

/// Decodes a mailbox name as the server sent it, accepting only the canonical form.
pub fn decode(raw: &[u8]) -> Result<String> {
    decode_with(raw, Tolerance { lenient: false })
}

/// Decodes a mailbox name, also accepting non-canonical encodings real servers send.
///
/// Tolerated: printable ASCII inside a base64 run (BR-04), two runs in a row, non-zero
/// padding bits, and raw UTF-8 outside runs. Refused (`None`): an unterminated `&`, a run
/// ending inside a code unit, characters outside the alphabet, lone surrogates and control
/// bytes. The caller keeps the raw name when this returns `None`.
pub fn decode_lenient(raw: &[u8]) -> Option<String> {
    decode_with(raw, Tolerance { lenient: true }).ok()
}

fn decode_with(raw: &[u8], tolerance: Tolerance) -> Result<String> {
    let mut out = String::with_capacity(raw.len());
    let mut previous_was_run = false;
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        if byte == b'&' {
            let start = i;
            let Some(len) = raw[start + 1..].iter().position(|&b| b == b'-') else {
                return Err(Mutf7Error::Unterminated { offset: start });
            };
            let run = &raw[start + 1..start + 1 + len];
            i = start + len + 2;
            if run.is_empty() {
                out.push('&');
                previous_was_run = false;
                continue;
            }
            if previous_was_run && !tolerance.lenient {
                return Err(Mutf7Error::AdjacentRuns { offset: start });
            }
            decode_run(run, start, tolerance, &mut out)?;
            previous_was_run = true;
        } else if is_printable(u32::from(byte)) {
            out.push(char::from(byte));
            previous_was_run = false;
            i += 1;
        } else if byte >= 0x80 && tolerance.lenient {
            // Raw UTF-8 (a server that ignores RFC 3501 or speaks UTF8=ACCEPT). Non-ASCII
            // bytes of UTF-8 are all >= 0x80, so the chunk ends on a character boundary.
            let len = raw[i..].iter().take_while(|&&b| b >= 0x80).count();
            let chunk = std::str::from_utf8(&raw[i..i + len])
                .map_err(|_| Mutf7Error::InvalidByte { offset: i, byte })?;
            out.push_str(chunk);
            previous_was_run = false;
            i += len;
        } else {
            return Err(Mutf7Error::InvalidByte { offset: i, byte });
        }
    }
    Ok(out)
}

/// Decodes the base64 between `&` (at `offset`) and `-` and appends the characters.
fn decode_run(run: &[u8], offset: usize, tolerance: Tolerance, out: &mut String) -> Result<()> {
    let mut units = Vec::with_capacity(run.len() * 6 / 16);
    let mut bits: u32 = 0;
    let mut count = 0u32;
    for (k, &byte) in run.iter().enumerate() {
        let value = base64_value(byte).ok_or(Mutf7Error::InvalidBase64 {
            offset: offset + 1 + k,
            byte,
        })?;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 16 {
            count -= 16;
            // Truncation is intended: the top 16 of the `count + 16` pending bits.
            units.push(((bits >> count) & 0xffff) as u16);
            bits &= (1 << count) - 1;
        }
    }
    // 6 or more bits left means a whole base64 character that finishes no code unit.
    if count >= 6 {
        return Err(Mutf7Error::PartialCodeUnit { offset });
    }
    if bits != 0 && !tolerance.lenient {
        return Err(Mutf7Error::NonZeroPadding { offset });
    }
    for decoded in char::decode_utf16(units.iter().copied()) {
        let c = decoded.map_err(|_| Mutf7Error::LoneSurrogate { offset })?;
        if is_printable(u32::from(c)) && !tolerance.lenient {
            return Err(Mutf7Error::EncodedPrintable { offset });
        }
        out.push(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (display name, canonical encoding)
    const CANONICAL: &[(&str, &str)] = &[
        ("", ""),
        ("INBOX", "INBOX"),
        ("Phish Reports", "Phish Reports"),
        ("Reports.2026", "Reports.2026"),
        ("R&D", "R&-D"),
        ("&", "&-"),
        ("&&", "&-&-"),
        ("a-b", "a-b"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
        (
            "Входящие/Фишинг",
            "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-",
        ),
        ("Фишинг&Спам", "&BCQEOARIBDgEPQQz-&-&BCEEPwQwBDw-"),
        ("Quarantäne", "Quarant&AOQ-ne"),
        ("Überprüfung", "&ANw-berpr&APw-fung"),
        ("日本語", "&ZeVnLIqe-"),
        // U+1F600 is the surrogate pair D83D DE00.
        ("😀", "&2D3eAA-"),
        ("a😀b", "a&2D3eAA-b"),
        ("\u{7f}", "&AH8-"),
        ("tab\there", "tab&AAk-here"),
        ("\u{0}", "&AAA-"),
        // `/` in the base64 alphabet becomes `,`; `+` stays.
        ("\u{fbff}", "&+,8-"),
        ("\u{ffff}", "&,,8-"),
    ];

    #[test]
    fn encodes_canonically() {
        for &(name, encoded) in CANONICAL {
            assert_eq!(encode(name), encoded, "encode({name:?})");
        }
    }

    #[test]
    fn decodes_canonical_forms_strictly_and_leniently() {
        for &(name, encoded) in CANONICAL {
            assert_eq!(
                decode(encoded.as_bytes()).as_deref(),
                Ok(name),
                "decode({encoded:?})"
            );
            assert_eq!(
                decode_lenient(encoded.as_bytes()).as_deref(),
                Some(name),
                "decode_lenient({encoded:?})"
            );
        }
    }

    /// Case BR-04: the names from the LIST transcript.
    #[test]
    fn br04_server_names() {
        // (raw as listed, display name, strict result)
        let table: &[(&str, &str, Result<&str>)] = &[
            (
                "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-",
                "Фишинг&Спам",
                Err(Mutf7Error::EncodedPrintable { offset: 0 }),
            ),
            ("&BBIERQQ+BDQETwRJBDgENQ-", "Входящие", Ok("Входящие")),
            (
                "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-",
                "Входящие/Фишинг",
                Ok("Входящие/Фишинг"),
            ),
            ("R&-D", "R&D", Ok("R&D")),
        ];
        for (raw, display, strict) in table {
            assert_eq!(
                decode_lenient(raw.as_bytes()).as_deref(),
                Some(*display),
                "{raw}"
            );
            assert_eq!(
                decode(raw.as_bytes()).as_deref(),
                strict.as_deref(),
                "{raw}"
            );
        }
        // The canonical form of the first name differs from what the server listed, which
        // is why a client must SELECT by the raw name.
        assert_eq!(encode("Фишинг&Спам"), "&BCQEOARIBDgEPQQz-&-&BCEEPwQwBDw-");
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        let table: &[(&[u8], Mutf7Error)] = &[
            (b"&", Mutf7Error::Unterminated { offset: 0 }),
            (b"abc&AOQ", Mutf7Error::Unterminated { offset: 3 }),
            (b"&-&", Mutf7Error::Unterminated { offset: 2 }),
            // 12 bits: no complete code unit.
            (b"&AO-", Mutf7Error::PartialCodeUnit { offset: 0 }),
            (b"&A-", Mutf7Error::PartialCodeUnit { offset: 0 }),
            // 24 bits: one unit and a superfluous character.
            (b"&AOQA-", Mutf7Error::PartialCodeUnit { offset: 0 }),
            (
                b"&AO=-",
                Mutf7Error::InvalidBase64 {
                    offset: 3,
                    byte: b'=',
                },
            ),
            (
                b"&AO/-",
                Mutf7Error::InvalidBase64 {
                    offset: 3,
                    byte: b'/',
                },
            ),
            (
                b"&A Q-",
                Mutf7Error::InvalidBase64 {
                    offset: 2,
                    byte: b' ',
                },
            ),
            (
                b"&\xc3\xa4-",
                Mutf7Error::InvalidBase64 {
                    offset: 1,
                    byte: 0xc3,
                },
            ),
            // D83D alone, DE00 alone, and a pair split over two runs.
            (b"&2D0-", Mutf7Error::LoneSurrogate { offset: 0 }),
            (b"&3gA-", Mutf7Error::LoneSurrogate { offset: 0 }),
            (b"&2D0-&3gA-", Mutf7Error::LoneSurrogate { offset: 0 }),
            (b"a&3gAAYQ-", Mutf7Error::LoneSurrogate { offset: 1 }),
            (
                b"tab\there",
                Mutf7Error::InvalidByte {
                    offset: 3,
                    byte: b'\t',
                },
            ),
            (b"\x00", Mutf7Error::InvalidByte { offset: 0, byte: 0 }),
            (
                b"\x7f",
                Mutf7Error::InvalidByte {
                    offset: 0,
                    byte: 0x7f,
                },
            ),
            (
                b"\xff",
                Mutf7Error::InvalidByte {
                    offset: 0,
                    byte: 0xff,
                },
            ),
            (
                b"\xc3",
                Mutf7Error::InvalidByte {
                    offset: 0,
                    byte: 0xc3,
                },
            ),
        ];
        for (raw, error) in table {
            let shown = String::from_utf8_lossy(raw);
            assert_eq!(decode(raw).as_ref(), Err(error), "decode({shown:?})");
            assert_eq!(decode_lenient(raw), None, "decode_lenient({shown:?})");
        }
    }

    #[test]
    fn non_canonical_forms_are_strict_errors_but_lenient_names() {
        let table: &[(&[u8], Mutf7Error, &str)] = &[
            // "A" (0x41) as base64.
            (b"&AEE-", Mutf7Error::EncodedPrintable { offset: 0 }, "A"),
            // ä as two runs in a row.
            (b"&AOQ-&AOQ-", Mutf7Error::AdjacentRuns { offset: 5 }, "ää"),
            // Last character R (…010001) leaves the padding bits non-zero.
            (b"&AOR-", Mutf7Error::NonZeroPadding { offset: 0 }, "ä"),
            (
                "Quarantäne".as_bytes(),
                Mutf7Error::InvalidByte {
                    offset: 7,
                    byte: 0xc3,
                },
                "Quarantäne",
            ),
        ];
        for (raw, error, lenient) in table {
            let shown = String::from_utf8_lossy(raw);
            assert_eq!(decode(raw).as_ref(), Err(error), "decode({shown:?})");
            assert_eq!(
                decode_lenient(raw).as_deref(),
                Some(*lenient),
                "decode_lenient({shown:?})"
            );
        }
    }

    /// A small deterministic generator (xorshift64*), so the property test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_name(rng: &mut Rng) -> String {
        const POOL: &[char] = &[
            'a',
            'Z',
            '0',
            ' ',
            '&',
            '-',
            '+',
            ',',
            '/',
            '.',
            '"',
            '\\',
            '~',
            '\t',
            '\u{0}',
            '\u{7f}',
            '\u{80}',
            'ä',
            'ß',
            'Ф',
            'ш',
            '台',
            '語',
            '\u{fbff}',
            '\u{ffff}',
            '😀',
            '\u{10ffff}',
            '\u{10000}',
        ];
        let len = rng.below(12);
        (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    // Any scalar value, surrogates excluded by char::from_u32.
                    loop {
                        if let Some(c) = char::from_u32((rng.next() % 0x11_0000) as u32) {
                            break c;
                        }
                    }
                } else {
                    POOL[rng.below(POOL.len())]
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_many_strings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let name = random_name(&mut rng);
            let encoded = encode(&name);
            assert!(
                encoded.bytes().all(|b| is_printable(u32::from(b))),
                "{encoded:?} is not printable ASCII"
            );
            assert_eq!(
                decode(encoded.as_bytes()).as_ref(),
                Ok(&name),
                "{encoded:?}"
            );
            assert_eq!(decode_lenient(encoded.as_bytes()).as_ref(), Some(&name));
        }
    }

    #[test]
    fn strict_decode_accepts_only_canonical_input() {
        // Random byte strings over the characters that matter: whatever decodes strictly
        // must re-encode to the very same bytes, and nothing may panic.
        const BYTES: &[u8] = b"&-AOQ2D3eAEE+,/ aZ\t\x80\xc3\xa4";
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = rng.below(10);
            let raw: Vec<u8> = (0..len).map(|_| BYTES[rng.below(BYTES.len())]).collect();
            if let Ok(name) = decode(&raw) {
                accepted += 1;
                assert_eq!(encode(&name).as_bytes(), raw.as_slice(), "{name:?}");
            }
            if let Some(name) = decode_lenient(&raw) {
                // A lenient name re-encodes to something the strict decoder accepts.
                assert_eq!(decode(encode(&name).as_bytes()), Ok(name));
            }
        }
        assert!(accepted > 100, "the generator hardly produced valid names");
    }
}
