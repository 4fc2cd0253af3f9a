//! Bencode, bounded: the decoder checks the input size, the nesting depth and the number
//! of values before it allocates anything for them, and names what was wrong.
//!
//! Decoded values borrow from the input (`Value<'a>`); the encoder writes dictionary
//! keys in sorted order, as bencode requires.

/// A bencoded value, borrowing its byte strings from the decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A list.
    List(Vec<Value<'a>>),
    /// A dictionary, in the order it was read (or will be sorted when written).
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The value under `key`, if this is a dictionary that has it (the first one, if a
    /// malformed input repeats a key).
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        match self {
            Value::Dict(entries) => entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }
}

/// What the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest input, in bytes.
    pub max_input: usize,
    /// Deepest nesting of lists and dictionaries (the top level counts as 1).
    pub max_depth: usize,
    /// Most values in the whole input (every integer, string, list, dictionary, and
    /// every dictionary key counts as one).
    pub max_values: usize,
}

/// The limits for KRPC packets. A KRPC message nests three deep (message, arguments,
/// `values` or `e` list); 4 KiB is more than any Mainline client sends in one UDP
/// datagram (libtorrent reads at most 1,500 bytes); 512 values cover the largest
/// `get_peers` response that fits in that (each peer is a value of 8 bytes or more).
pub const KRPC_LIMITS: Limits = Limits {
    max_input: 4096,
    max_depth: 6,
    max_values: 512,
};

/// Why an input is not bencode we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// The input is longer than `Limits::max_input`.
    #[error("input of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Lists and dictionaries nest deeper than `Limits::max_depth`.
    #[error("nesting deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More values than `Limits::max_values`.
    #[error("more than {max} values")]
    TooManyValues {
        /// The limit.
        max: usize,
    },
    /// The input ends inside a value.
    #[error("input ends inside a value")]
    UnexpectedEnd,
    /// A byte that cannot start a value, at this offset.
    #[error("unexpected byte {byte:#04x} at offset {at}")]
    UnexpectedByte {
        /// Offset in the input.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// An integer that is empty, has leading zeros, is `-0` or does not fit in an i64.
    #[error("malformed integer at offset {at}")]
    BadInteger {
        /// Offset in the input.
        at: usize,
    },
    /// A string length that is malformed or runs past the end of the input.
    #[error("malformed string length at offset {at}")]
    BadLength {
        /// Offset in the input.
        at: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at offset {at} is not a string")]
    NonStringKey {
        /// Offset in the input.
        at: usize,
    },
    /// Bytes follow the top-level value.
    #[error("{count} bytes after the value")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Decodes exactly one value that spans all of `input`, within `limits`.
pub fn decode<'a>(input: &'a [u8], limits: &Limits) -> Result<Value<'a>, BencodeError> {
    if input.len() > limits.max_input {
        return Err(BencodeError::TooLong {
            len: input.len(),
            max: limits.max_input,
        });
    }
    let mut decoder = Decoder {
        input,
        pos: 0,
        values: 0,
        limits,
    };
    let value = decoder.value(1)?;
    if decoder.pos != input.len() {
        return Err(BencodeError::TrailingBytes {
            count: input.len() - decoder.pos,
        });
    }
    Ok(value)
}

struct Decoder<'a, 'l> {
    input: &'a [u8],
    pos: usize,
    values: usize,
    limits: &'l Limits,
}

impl<'a> Decoder<'a, '_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEnd)
    }

    fn count(&mut self) -> Result<(), BencodeError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(BencodeError::TooManyValues {
                max: self.limits.max_values,
            });
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, BencodeError> {
        self.count()?;
        match self.peek()? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.bytes().map(Value::Bytes),
            b'l' => {
                self.nest(depth)?;
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.nest(depth)?;
                self.pos += 1;
                let mut entries = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::NonStringKey { at: self.pos });
                    }
                    self.count()?;
                    let key = self.bytes()?;
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                self.pos += 1;
                Ok(Value::Dict(entries))
            }
            byte => Err(BencodeError::UnexpectedByte { at: self.pos, byte }),
        }
    }

    fn nest(&self, depth: usize) -> Result<(), BencodeError> {
        if depth > self.limits.max_depth {
            return Err(BencodeError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// `i<digits>e` at `pos`.
    fn int(&mut self) -> Result<i64, BencodeError> {
        let at = self.pos;
        let rest = &self.input[at + 1..];
        let end = rest
            .iter()
            .position(|&b| b == b'e')
            .ok_or(BencodeError::UnexpectedEnd)?;
        let text = &rest[..end];
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        let canonical = !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && !(digits.len() > 1 && digits[0] == b'0')
            && text != b"-0";
        if !canonical || digits.len() > 19 {
            return Err(BencodeError::BadInteger { at });
        }
        let value = std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(BencodeError::BadInteger { at })?;
        self.pos = at + 1 + end + 1;
        Ok(value)
    }

    /// `<len>:<bytes>` at `pos`; the length is checked against the input before use.
    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        let at = self.pos;
        let rest = &self.input[at..];
        let colon = rest
            .iter()
            .take(8)
            .position(|&b| b == b':')
            .ok_or(if rest.len() < 8 {
                BencodeError::UnexpectedEnd
            } else {
                BencodeError::BadLength { at }
            })?;
        let digits = &rest[..colon];
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits.len() > 1 && digits[0] == b'0')
        {
            return Err(BencodeError::BadLength { at });
        }
        let len = digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        let start = at + colon + 1;
        if len > self.input.len() - start {
            return Err(BencodeError::BadLength { at });
        }
        self.pos = start + len;
        Ok(&self.input[start..start + len])
    }
}

/// Appends the encoding of `value` to `out`, with dictionary keys sorted.
pub fn encode(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(entries) => {
            let mut sorted: Vec<&(&[u8], Value<'_>)> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'd');
            for (key, value) in sorted {
                encode_bytes(key, out);
                encode(value, out);
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(input: &[u8]) -> Result<Value<'_>, BencodeError> {
        decode(input, &KRPC_LIMITS)
    }

    #[test]
    fn round_trips() {
        let input = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let value = dec(input).expect("decodes");
        assert_eq!(
            value.get(b"q").and_then(Value::as_bytes),
            Some(&b"ping"[..])
        );
        let mut out = Vec::new();
        encode(&value, &mut out);
        assert_eq!(out, input);
        assert_eq!(dec(b"i-42e"), Ok(Value::Int(-42)));
        assert_eq!(dec(b"le"), Ok(Value::List(vec![])));
        assert_eq!(dec(b"0:"), Ok(Value::Bytes(b"")));
    }

    #[test]
    fn encoder_sorts_keys() {
        let value = Value::Dict(vec![(b"z", Value::Int(1)), (b"a", Value::Int(2))]);
        let mut out = Vec::new();
        encode(&value, &mut out);
        assert_eq!(out, b"d1:ai2e1:zi1ee");
    }

    #[test]
    fn malformed_inputs_are_named() {
        use BencodeError::*;
        assert_eq!(dec(b""), Err(UnexpectedEnd));
        assert_eq!(dec(b"i12"), Err(UnexpectedEnd));
        assert_eq!(dec(b"i012e"), Err(BadInteger { at: 0 }));
        assert_eq!(dec(b"i-0e"), Err(BadInteger { at: 0 }));
        assert_eq!(dec(b"ie"), Err(BadInteger { at: 0 }));
        assert_eq!(dec(b"i99999999999999999999e"), Err(BadInteger { at: 0 }));
        assert_eq!(dec(b"5:abc"), Err(BadLength { at: 0 }));
        assert_eq!(dec(b"99999999999:x"), Err(BadLength { at: 0 }));
        assert_eq!(dec(b"01:a"), Err(BadLength { at: 0 }));
        assert_eq!(dec(b"x"), Err(UnexpectedByte { at: 0, byte: b'x' }));
        assert_eq!(dec(b"di1ei2ee"), Err(NonStringKey { at: 1 }));
        assert_eq!(dec(b"i1ei2e"), Err(TrailingBytes { count: 3 }));
        assert_eq!(dec(b"l"), Err(UnexpectedEnd));
        assert_eq!(dec(b"d1:a"), Err(UnexpectedEnd));
    }

    #[test]
    fn limits_hold_before_allocation() {
        let deep = [b"l".repeat(7), b"e".repeat(7)].concat();
        assert_eq!(dec(&deep), Err(BencodeError::TooDeep { max: 6 }));
        let shallow = [b"l".repeat(6), b"e".repeat(6)].concat();
        assert!(dec(&shallow).is_ok());
        // A very deep input stops at the limit, not at the stack's.
        let very_deep = b"l".repeat(4000);
        assert_eq!(dec(&very_deep), Err(BencodeError::TooDeep { max: 6 }));
        let many = [b"l".to_vec(), b"i1e".repeat(600), b"e".to_vec()].concat();
        assert_eq!(dec(&many), Err(BencodeError::TooManyValues { max: 512 }));
        let long = vec![b'0'; 5000];
        assert_eq!(
            dec(&long),
            Err(BencodeError::TooLong {
                len: 5000,
                max: 4096
            })
        );
    }
}
