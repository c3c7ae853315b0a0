//! Codec tests: known layouts, typed errors, and property tests (round trip
//! of every frame type; arbitrary bytes never panic the decoder).

use proptest::prelude::*;

use super::*;

fn one(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    match decode(buf, DEFAULT_MAX_FRAME)? {
        Decoded::Frame { frame, len } => Ok((frame, len)),
        Decoded::Incomplete { needed } => panic!("incomplete, needs {needed}"),
    }
}

#[test]
fn job_frame_layout_is_as_documented() {
    let mut out = Vec::new();
    encode_job(&mut out, 7, 3, 2, b"hi", DEFAULT_MAX_FRAME).unwrap();
    let expected: Vec<u8> = [
        &23u32.to_le_bytes()[..],
        &[kind::JOB],
        &7u64.to_le_bytes(),
        &3u64.to_le_bytes(),
        &2u32.to_le_bytes(),
        &[payload_kind::INLINE],
        b"hi",
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn hello_layout_starts_with_magic() {
    let mut out = Vec::new();
    let hello = Frame::Hello(Hello {
        version: 1,
        capabilities: 0,
        name: b"py",
    });
    encode(&mut out, &hello, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(&out[..5], &[12, 0, 0, 0, kind::HELLO]);
    assert_eq!(&out[5..9], b"JMWP");
    assert_eq!(one(&out).unwrap(), (hello, out.len()));
}

#[test]
fn partial_input_is_incomplete_with_the_needed_total() {
    let mut out = Vec::new();
    encode_result(&mut out, 1, b"abcdef", DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(
        decode(&out[..3], DEFAULT_MAX_FRAME).unwrap(),
        Decoded::Incomplete { needed: HEADER_LEN }
    );
    assert_eq!(
        decode(&out[..out.len() - 1], DEFAULT_MAX_FRAME).unwrap(),
        Decoded::Incomplete { needed: out.len() }
    );
}

#[test]
fn oversized_length_is_frame_too_large_before_the_body_arrives() {
    let mut buf = 1000u32.to_le_bytes().to_vec();
    buf.push(kind::JOB);
    assert_eq!(
        decode(&buf, 999),
        Err(DecodeError::FrameTooLarge {
            len: 1000,
            max: 999
        })
    );
}

#[test]
fn encoding_over_the_cap_is_refused_and_appends_nothing() {
    let mut out = vec![1, 2, 3];
    let err = encode_job(&mut out, 1, 1, 1, &[0; 100], 50).unwrap_err();
    assert_eq!(err.max, 50);
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn unknown_type_is_a_typed_error() {
    let buf = [0, 0, 0, 0, 0x7f];
    assert_eq!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::UnknownType(0x7f))
    );
}

#[test]
fn short_body_is_malformed() {
    let mut buf = 4u32.to_le_bytes().to_vec();
    buf.push(kind::JOB);
    buf.extend_from_slice(&[1, 2, 3, 4]);
    assert!(matches!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::Malformed { frame: "JOB", .. })
    ));
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut buf = 9u32.to_le_bytes().to_vec();
    buf.push(kind::HEARTBEAT);
    buf.extend_from_slice(&[0; 9]);
    assert!(matches!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::Malformed {
            frame: "HEARTBEAT",
            ..
        })
    ));
}

#[test]
fn unknown_payload_kind_is_a_typed_error() {
    let mut buf = Vec::new();
    encode_result(&mut buf, 5, b"x", DEFAULT_MAX_FRAME).unwrap();
    buf[HEADER_LEN + 8] = 9;
    assert_eq!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::UnknownPayloadKind {
            frame: "RESULT",
            kind: 9
        })
    );
}

#[test]
fn arena_job_frame_layout_is_as_documented() {
    let mut out = Vec::new();
    encode_job_arena(&mut out, 7, 3, 2, 4096, 1 << 20);
    let expected: Vec<u8> = [
        &37u32.to_le_bytes()[..],
        &[kind::JOB],
        &7u64.to_le_bytes(),
        &3u64.to_le_bytes(),
        &2u32.to_le_bytes(),
        &[payload_kind::ARENA],
        &4096u64.to_le_bytes(),
        &(1u64 << 20).to_le_bytes(),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn arena_reference_with_trailing_bytes_is_malformed() {
    let mut buf = Vec::new();
    encode_result_arena(&mut buf, 5, 0, 10);
    buf.push(0);
    buf[0] += 1;
    assert!(matches!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::Malformed {
            frame: "RESULT",
            ..
        })
    ));
}

#[test]
fn welcome_layout_depends_on_the_version() {
    let mut w = Welcome {
        version: 1,
        window: 16,
        max_frame: 1024,
        heartbeat_ms: 0,
        capabilities: 1,
        arena_threshold: 0,
        arena_jobs: 0,
        arena_results: 0,
    };
    let mut out = Vec::new();
    encode(&mut out, &Frame::Welcome(w), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(out.len(), HEADER_LEN + WELCOME_V1_LEN);
    w.version = 2;
    w.arena_threshold = 65536;
    w.arena_jobs = 1 << 30;
    w.arena_results = 1 << 29;
    let mut out = Vec::new();
    encode(&mut out, &Frame::Welcome(w), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(out.len(), HEADER_LEN + WELCOME_V2_LEN);
    assert_eq!(one(&out).unwrap(), (Frame::Welcome(w), out.len()));
}

#[test]
fn hello_without_magic_is_bad_magic() {
    let mut buf = 10u32.to_le_bytes().to_vec();
    buf.push(kind::HELLO);
    buf.extend_from_slice(b"HTTP/1.1 x");
    assert_eq!(decode(&buf, DEFAULT_MAX_FRAME), Err(DecodeError::BadMagic));
}

#[test]
fn batch_round_trips_entries_in_order() {
    let mut out = Vec::new();
    let mut b = BatchBuilder::begin(&mut out, DEFAULT_MAX_FRAME);
    b.push_result(&mut out, 1, b"one").unwrap();
    b.push_failure(&mut out, 2, b"bad input").unwrap();
    b.push_result(&mut out, 3, b"").unwrap();
    b.finish(&mut out);
    let (frame, len) = one(&out).unwrap();
    assert_eq!(len, out.len());
    let Frame::Batch(batch) = frame else {
        panic!("not a batch: {frame:?}")
    };
    assert_eq!(batch.len(), 3);
    let entries: Vec<_> = batch.iter().collect();
    assert_eq!(
        entries,
        vec![
            BatchEntry::Result(ResultFrame {
                id: 1,
                payload: Payload::Inline(b"one")
            }),
            BatchEntry::Failure(FailureFrame {
                id: 2,
                message: b"bad input"
            }),
            BatchEntry::Result(ResultFrame {
                id: 3,
                payload: Payload::Inline(b"")
            }),
        ]
    );
}

#[test]
fn empty_batch_leaves_no_bytes() {
    let mut out = vec![9];
    let b = BatchBuilder::begin(&mut out, DEFAULT_MAX_FRAME);
    b.finish(&mut out);
    assert_eq!(out, vec![9]);
}

#[test]
fn batch_refuses_entries_past_its_cap() {
    let mut out = Vec::new();
    let mut b = BatchBuilder::begin(&mut out, 40);
    b.push_result(&mut out, 1, &[0; 10]).unwrap(); // 5 + 9 + 10 = 24 bytes
    assert!(b.push_result(&mut out, 2, &[0; 10]).is_err());
    b.finish(&mut out);
    assert_eq!(one(&out).unwrap().1, out.len());
}

#[test]
fn batch_with_a_job_inside_is_malformed() {
    let mut inner = Vec::new();
    encode_job(&mut inner, 1, 1, 1, b"", DEFAULT_MAX_FRAME).unwrap();
    let mut buf = (inner.len() as u32).to_le_bytes().to_vec();
    buf.push(kind::BATCH);
    buf.extend_from_slice(&inner);
    assert!(matches!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::Malformed { frame: "BATCH", .. })
    ));
}

#[test]
fn batch_with_a_cut_entry_is_malformed() {
    let mut inner = Vec::new();
    encode_result(&mut inner, 1, b"abc", DEFAULT_MAX_FRAME).unwrap();
    inner.pop();
    let mut buf = (inner.len() as u32).to_le_bytes().to_vec();
    buf.push(kind::BATCH);
    buf.extend_from_slice(&inner);
    assert!(matches!(
        decode(&buf, DEFAULT_MAX_FRAME),
        Err(DecodeError::Malformed { frame: "BATCH", .. })
    ));
}

/// An owned description of a frame, for generating test cases.
#[derive(Debug, Clone)]
enum Owned {
    Hello(u16, u32, Vec<u8>),
    Welcome(u16, u32, u32, u32, u32, u32, u64, u64),
    JobArena(u64, u64, u32, u64, u64),
    ResultArena(u64, u64, u64),
    Refuse(u16, Vec<u8>),
    Job(u64, u64, u32, Vec<u8>),
    PollEnd,
    Closed,
    Result(u64, Vec<u8>),
    Failure(u64, Vec<u8>),
    Batch(Vec<(bool, u64, Vec<u8>)>),
    Poll,
    Leaving(u64),
    Heartbeat(u64),
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), bytes()).prop_map(|(a, b, c)| Owned::Hello(a, b, c)),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            (any::<u32>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(|(a, b, c, d, e, (f, g, h))| {
                // Version 1 has no arena fields: they decode as zeros.
                if a >= 2 {
                    Owned::Welcome(a, b, c, d, e, f, g, h)
                } else {
                    Owned::Welcome(a, b, c, d, e, 0, 0, 0)
                }
            }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(a, b, c, d, e)| Owned::JobArena(a, b, c, d, e)),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(a, b, c)| Owned::ResultArena(a, b, c)),
        (any::<u16>(), bytes()).prop_map(|(a, b)| Owned::Refuse(a, b)),
        (any::<u64>(), any::<u64>(), any::<u32>(), bytes())
            .prop_map(|(a, b, c, d)| Owned::Job(a, b, c, d)),
        Just(Owned::PollEnd),
        Just(Owned::Closed),
        (any::<u64>(), bytes()).prop_map(|(a, b)| Owned::Result(a, b)),
        (any::<u64>(), bytes()).prop_map(|(a, b)| Owned::Failure(a, b)),
        proptest::collection::vec((any::<bool>(), any::<u64>(), bytes()), 1..8)
            .prop_map(Owned::Batch),
        Just(Owned::Poll),
        any::<u64>().prop_map(Owned::Leaving),
        any::<u64>().prop_map(Owned::Heartbeat),
    ]
}

/// Encodes `o`, returning the bytes.
fn encode_owned(o: &Owned) -> Vec<u8> {
    let mut out = Vec::new();
    let max = DEFAULT_MAX_FRAME;
    match o {
        Owned::Hello(v, c, n) => encode(
            &mut out,
            &Frame::Hello(Hello {
                version: *v,
                capabilities: *c,
                name: n,
            }),
            max,
        ),
        Owned::Welcome(v, w, m, h, c, t, j, r) => encode(
            &mut out,
            &Frame::Welcome(Welcome {
                version: *v,
                window: *w,
                max_frame: *m,
                heartbeat_ms: *h,
                capabilities: *c,
                arena_threshold: *t,
                arena_jobs: *j,
                arena_results: *r,
            }),
            max,
        ),
        Owned::JobArena(i, s, a, o, l) => {
            encode_job_arena(&mut out, *i, *s, *a, *o, *l);
            Ok(())
        }
        Owned::ResultArena(i, o, l) => {
            encode_result_arena(&mut out, *i, *o, *l);
            Ok(())
        }
        Owned::Refuse(v, r) => encode(
            &mut out,
            &Frame::Refuse(Refuse {
                version: *v,
                reason: r,
            }),
            max,
        ),
        Owned::Job(i, s, a, p) => encode_job(&mut out, *i, *s, *a, p, max),
        Owned::PollEnd => encode(&mut out, &Frame::PollEnd, max),
        Owned::Closed => encode(&mut out, &Frame::Closed, max),
        Owned::Result(i, p) => encode_result(&mut out, *i, p, max),
        Owned::Failure(i, m) => encode_failure(&mut out, *i, m, max),
        Owned::Batch(entries) => {
            let mut b = BatchBuilder::begin(&mut out, max);
            for (ok, id, data) in entries {
                if *ok {
                    b.push_result(&mut out, *id, data).unwrap();
                } else {
                    b.push_failure(&mut out, *id, data).unwrap();
                }
            }
            b.finish(&mut out);
            Ok(())
        }
        Owned::Poll => encode(&mut out, &Frame::Poll, max),
        Owned::Leaving(n) => encode(&mut out, &Frame::Leaving { taken: *n }, max),
        Owned::Heartbeat(n) => encode(&mut out, &Frame::Heartbeat { nonce: *n }, max),
    }
    .unwrap();
    out
}

/// Whether the decoded frame carries exactly what `o` described.
fn same(o: &Owned, f: &Frame<'_>) -> bool {
    match (o, f) {
        (Owned::Hello(v, c, n), Frame::Hello(h)) => {
            h.version == *v && h.capabilities == *c && h.name == &n[..]
        }
        (Owned::Welcome(v, w, m, hb, c, t, aj, ar), Frame::Welcome(x)) => {
            *x == Welcome {
                version: *v,
                window: *w,
                max_frame: *m,
                heartbeat_ms: *hb,
                capabilities: *c,
                arena_threshold: *t,
                arena_jobs: *aj,
                arena_results: *ar,
            }
        }
        (Owned::JobArena(i, s, a, o, l), Frame::Job(j)) => {
            j.id == *i
                && j.seq == *s
                && j.attempt == *a
                && j.payload
                    == Payload::Arena {
                        offset: *o,
                        len: *l,
                    }
        }
        (Owned::ResultArena(i, o, l), Frame::Result(r)) => {
            r.id == *i
                && r.payload
                    == Payload::Arena {
                        offset: *o,
                        len: *l,
                    }
        }
        (Owned::Refuse(v, r), Frame::Refuse(x)) => x.version == *v && x.reason == &r[..],
        (Owned::Job(i, s, a, p), Frame::Job(j)) => {
            j.id == *i && j.seq == *s && j.attempt == *a && j.payload.inline() == Some(&p[..])
        }
        (Owned::PollEnd, Frame::PollEnd)
        | (Owned::Closed, Frame::Closed)
        | (Owned::Poll, Frame::Poll) => true,
        (Owned::Result(i, p), Frame::Result(r)) => r.id == *i && r.payload.inline() == Some(&p[..]),
        (Owned::Failure(i, m), Frame::Failure(x)) => x.id == *i && x.message == &m[..],
        (Owned::Batch(entries), Frame::Batch(b)) => {
            b.len() == entries.len()
                && b.iter().zip(entries).all(|(e, (ok, id, data))| match e {
                    BatchEntry::Result(r) => {
                        *ok && r.id == *id && r.payload.inline() == Some(&data[..])
                    }
                    BatchEntry::Failure(x) => !*ok && x.id == *id && x.message == &data[..],
                })
        }
        (Owned::Leaving(n), Frame::Leaving { taken }) => taken == n,
        (Owned::Heartbeat(n), Frame::Heartbeat { nonce }) => nonce == n,
        _ => false,
    }
}

proptest! {
    #[test]
    fn every_frame_round_trips(o in owned()) {
        let bytes = encode_owned(&o);
        let (frame, len) = one(&bytes).unwrap();
        prop_assert_eq!(len, bytes.len());
        prop_assert!(same(&o, &frame), "{:?} decoded as {:?}", o, frame);
        // Re-encoding the decoded frame gives the same bytes.
        let mut again = Vec::new();
        encode(&mut again, &frame, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(again, bytes);
    }

    #[test]
    fn a_stream_of_frames_decodes_in_order_at_any_split(
        frames in proptest::collection::vec(owned(), 1..6),
        split in any::<prop::sample::Index>(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(encode_owned).collect();
        // Feeding a prefix gives Incomplete or whole frames, never an error.
        let cut = split.index(stream.len() + 1);
        let mut pos = 0;
        while let Decoded::Frame { len, .. } = decode(&stream[pos..cut], DEFAULT_MAX_FRAME).unwrap() {
            pos += len;
        }
        // The whole stream gives back every frame.
        let mut pos = 0;
        for o in &frames {
            let (f, len) = one(&stream[pos..]).unwrap();
            prop_assert!(same(o, &f));
            pos += len;
        }
        prop_assert_eq!(pos, stream.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        max in 0usize..512,
    ) {
        let mut rest = &bytes[..];
        while let Ok(Decoded::Frame { len, frame }) = decode(rest, max) {
            prop_assert!(len >= HEADER_LEN && len <= rest.len());
            if let Frame::Batch(b) = frame {
                prop_assert_eq!(b.iter().count(), b.len());
            }
            // Whatever is accepted re-encodes to the very same bytes.
            let mut again = Vec::new();
            encode(&mut again, &frame, max).unwrap();
            prop_assert_eq!(&again[..], &rest[..len]);
            rest = &rest[len..];
        }
    }

    #[test]
    fn a_valid_type_byte_with_random_body_never_panics(
        code in prop::sample::select(vec![
            kind::HELLO, kind::WELCOME, kind::REFUSE, kind::JOB, kind::POLL_END,
            kind::CLOSED, kind::RESULT, kind::FAILURE, kind::BATCH, kind::POLL,
            kind::LEAVING, kind::HEARTBEAT,
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.push(code);
        buf.extend_from_slice(&body);
        if let Ok(Decoded::Frame { frame, len }) = decode(&buf, DEFAULT_MAX_FRAME) {
            if let Frame::Batch(b) = frame {
                prop_assert_eq!(b.iter().count(), b.len());
            }
            let mut again = Vec::new();
            encode(&mut again, &frame, DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(&again[..], &buf[..len]);
        }
    }
}
