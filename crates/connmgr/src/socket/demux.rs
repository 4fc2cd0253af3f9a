//! Telling KRPC datagrams from QUIC packets by their first bytes, and taking them out of
//! a GRO buffer. No I/O.

/// Whether `datagram` is a KRPC message: a bencoded dictionary whose first key's length
/// follows the `d`. No QUIC packet our endpoint accepts looks like this (see
/// `NodeSocket`).
pub(crate) fn is_krpc(datagram: &[u8]) -> bool {
    matches!(datagram, [b'd', digit, ..] if digit.is_ascii_digit())
}

/// Passes every KRPC segment of `buf` (segments of `stride` bytes, the last one maybe
/// shorter, as GRO delivers them) to `divert`, moves the others together in their order,
/// and returns their total length. The segments kept are still `stride` apart, all full
/// but maybe the last, so the result is again a valid GRO buffer.
pub(crate) fn keep_segments(buf: &mut [u8], stride: usize, mut divert: impl FnMut(&[u8])) -> usize {
    let stride = if stride == 0 { buf.len() } else { stride };
    let (mut read, mut write) = (0, 0);
    while read < buf.len() {
        let end = (read + stride).min(buf.len());
        if is_krpc(&buf[read..end]) {
            divert(&buf[read..end]);
        } else {
            if write != read {
                buf.copy_within(read..end, write);
            }
            write += end - read;
        }
        read = end;
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krpc_is_d_then_a_digit() {
        assert!(is_krpc(
            b"d1:ad2:id20:xxxxxxxxxxxxxxxxxxxxe1:q4:ping1:t2:aa1:y1:qe"
        ));
        assert!(is_krpc(b"d9:"));
        // A short header with the spin and key phase bits set starts with 0x64 = 'd'.
        assert!(!is_krpc(&[0x64, 0xb3, 0x11, 0x22]));
        assert!(!is_krpc(b"d"));
        assert!(!is_krpc(b""));
        assert!(!is_krpc(&[0xc3, b'1']), "long header");
        assert!(!is_krpc(b"l1:ae"), "a list is no KRPC message");
    }

    #[test]
    fn krpc_segments_leave_a_gro_buffer_and_the_rest_stays_in_order() {
        // Four segments of stride 4, the last one 2 bytes: QUIC, KRPC, QUIC, KRPC.
        let mut buf = *b"\x41aaad1:bQ\x42ccd2";
        let mut diverted = Vec::new();
        let len = keep_segments(&mut buf, 4, |s| diverted.push(s.to_vec()));
        assert_eq!(&buf[..len], b"\x41aaaQ\x42cc");
        assert_eq!(diverted, vec![b"d1:b".to_vec(), b"d2".to_vec()]);
    }

    #[test]
    fn a_buffer_without_krpc_is_untouched() {
        let mut buf = *b"\x64\xb0xx\x64\xb1y";
        let len = keep_segments(&mut buf, 4, |s| panic!("diverted {s:?}"));
        assert_eq!(len, 7);
        assert_eq!(&buf, b"\x64\xb0xx\x64\xb1y");
    }

    #[test]
    fn only_krpc_leaves_nothing_and_stride_zero_is_one_datagram() {
        let mut buf = *b"d1:ad1:be";
        let mut count = 0;
        assert_eq!(keep_segments(&mut buf, 0, |_| count += 1), 0);
        assert_eq!(count, 1);
    }
}
