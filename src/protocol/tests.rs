use super::*;

fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

#[tokio::test]
async fn startup_packets_decode() {
    let cases: Vec<(Vec<u8>, Result<StartupRequest, &str>)> = vec![
        (packet(SSL_REQUEST, b""), Ok(StartupRequest::Ssl)),
        (packet(GSSENC_REQUEST, b""), Ok(StartupRequest::GssEnc)),
        (
            packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]),
            Ok(StartupRequest::Cancel(BackendKey { pid: 7, secret: 9 })),
        ),
        (
            packet(PROTOCOL_V3, b"user\0app\0database\0db\0\0"),
            Ok(StartupRequest::Startup {
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into()),
                ],
                minor: 0,
            }),
        ),
        (
            packet(PROTOCOL_V3 + 2, b"user\0app\0\0"),
            Ok(StartupRequest::Startup {
                params: vec![("user".into(), "app".into())],
                minor: 2,
            }),
        ),
        (packet(PROTOCOL_V3, b"user\0app"), Err("08P01")),
        (packet(2 << 16, b""), Err("0A000")),
        (vec![0, 0, 0, 3, 1, 2, 3], Err("08P01")),
        (vec![0x7f, 0, 0, 0], Err("08P01")),
        (vec![b'X', 0, 0, 0, 5], Err("08P01")),
    ];
    for (bytes, want) in cases {
        let got = read_startup(&mut &bytes[..], MAX_STARTUP_PACKET).await;
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w),
            (Err(e), Err(code)) => assert_eq!(e.sqlstate(), code, "{e}"),
            (g, w) => panic!("bytes {bytes:?}: got {g:?}, want {w:?}"),
        }
    }
    // A Terminate instead of a startup packet is a client leaving: nothing to answer.
    let got = read_startup(&mut &[b'X', 0, 0, 0, 4][..], MAX_STARTUP_PACKET).await;
    assert!(
        got.as_ref().is_err_and(ProxyError::is_disconnect),
        "{got:?}"
    );
}

#[tokio::test]
async fn frames_split_and_reject_absurd_lengths() {
    let mut data = BytesMut::new();
    encode::query(&mut data, "SELECT 1");
    encode::terminate(&mut data);
    let mut reader = FrameReader::new(&data[..], 1024);
    let q = reader.next().await.unwrap().unwrap();
    assert_eq!((q.tag, q.body()), (b'Q', &b"SELECT 1\0"[..]));
    assert!(reader.has_frame());
    assert_eq!(reader.next().await.unwrap().unwrap().tag, b'X');
    assert!(reader.next().await.unwrap().is_none());

    let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
    let err = FrameReader::new(&huge[..], 1024).next().await.unwrap_err();
    assert_eq!(err.sqlstate(), "08P01");
    let negative = [b'Q', 0, 0, 0, 2];
    assert!(FrameReader::new(&negative[..], 1024).next().await.is_err());
}

#[tokio::test]
async fn closed_sees_the_peer_leave_and_keeps_what_came_before() {
    let mut data = BytesMut::new();
    encode::query(&mut data, "SELECT 1");
    let mut reader = FrameReader::with_chunk(&data[..], 1024, 16);
    reader.closed(1024).await.unwrap();
    assert_eq!(reader.next().await.unwrap().map(|f| f.tag), Some(b'Q'));
    assert!(reader.next().await.unwrap().is_none());

    // Past the limit it reads no further: the peer is left to TCP's flow control.
    let mut reader = FrameReader::with_chunk(&data[..], 1024, 4);
    let wait = tokio::time::timeout(std::time::Duration::from_millis(50), reader.closed(4));
    assert!(wait.await.is_err(), "waits once the limit is buffered");
    assert!(reader.buf.len() < data.len());
}

#[test]
fn error_fields_parse() {
    let mut out = BytesMut::new();
    encode::error(
        &mut out,
        Severity::Fatal,
        "3D000",
        "database \"x\" does not exist",
    );
    let f = ErrorFields::parse(&out[5..]);
    assert_eq!(f.code, "3D000");
    assert_eq!(f.severity, "FATAL");
    assert_eq!(f.message, "database \"x\" does not exist");
}

/// Property tests: whatever bytes arrive, in whatever pieces, decoding neither panics
/// nor holds more memory than what arrived, and the pieces never change the outcome.
mod props {
    use super::*;
    use futures_util::FutureExt;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket that hands over the chunks pushed so far, one per read, then
    /// waits (`Pending`) until more are pushed or it is closed.
    #[derive(Default)]
    struct Trickle {
        chunks: VecDeque<Vec<u8>>,
        closed: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let Some(mut chunk) = self.chunks.pop_front() else {
                return if self.closed {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(chunk.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    /// `data` cut at the given points (taken modulo its length).
    fn cut(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        at.push(0);
        at.push(data.len());
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
    }

    /// How a decode ended: the frames, then a clean end (`None`) or an error's SQLSTATE.
    type Outcome = (Vec<(u8, Vec<u8>)>, Option<String>);

    /// Decodes `chunks` as they arrive one by one, checking after every step that the
    /// buffer holds no more than twice what arrived plus two read chunks (64 bytes at least).
    fn decode_frames(chunks: Vec<Vec<u8>>, max_len: usize, chunk: usize) -> Outcome {
        let mut reader = FrameReader::with_chunk(Trickle::default(), max_len, chunk);
        let mut frames = Vec::new();
        let mut received = 0;
        let mut pending = chunks.into_iter();
        loop {
            match reader.next().now_or_never() {
                Some(Ok(Some(f))) => {
                    assert!(f.raw.len() <= max_len + 1, "frame over the limit");
                    frames.push((f.tag, f.raw.to_vec()));
                }
                Some(Ok(None)) => return (frames, None),
                Some(Err(e)) => return (frames, Some(e.sqlstate().to_owned())),
                None => match pending.next() {
                    Some(c) => {
                        received += c.len();
                        reader.get_mut().chunks.push_back(c);
                    }
                    None => reader.get_mut().closed = true,
                },
            }
            // A read into a full BytesMut grows it by at least 64 bytes (its
            // `chunk_mut`), whatever the read chunk.
            let held = reader.buf.capacity();
            assert!(
                held <= 2 * received + 2 * chunk.max(64),
                "buffer of {held} bytes after receiving {received}"
            );
        }
    }

    fn encode_frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_decode_the_same_whatever_the_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..64),
            max_len in 4usize..2048,
            chunk in 1usize..2048,
        ) {
            let whole = decode_frames(vec![data.clone()], max_len, chunk);
            let pieces = decode_frames(cut(&data, &cuts), max_len, chunk);
            prop_assert_eq!(&whole, &pieces);
            // Only a protocol violation or a stream cut inside a message ends it.
            if let Some(code) = whole.1 {
                prop_assert_eq!(code, "08P01");
            }
        }

        #[test]
        fn frames_round_trip_in_any_chunking(
            frames in proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..3000)),
                0..16,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..64),
            chunk in 1usize..9000,
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(|(t, b)| encode_frame(*t, b)).collect();
            let (got, end) = decode_frames(cut(&wire, &cuts), 4096, chunk);
            let want: Vec<(u8, Vec<u8>)> =
                frames.iter().map(|(t, b)| (*t, encode_frame(*t, b))).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(end, None);
        }

        #[test]
        fn bad_lengths_fail_as_soon_as_the_header_arrives(
            tag in any::<u8>(),
            len in prop_oneof![i32::MIN..4, 4097..=i32::MAX],
        ) {
            let mut header = vec![tag];
            header.extend_from_slice(&len.to_be_bytes());
            let mut reader = FrameReader::with_chunk(Trickle::default(), 4096, 1024);
            reader.get_mut().chunks.push_back(header);
            // Nothing more arrives and the stream stays open: the error must not wait.
            match reader.next().now_or_never() {
                Some(Err(e)) => prop_assert_eq!(e.sqlstate(), "08P01"),
                other => prop_assert!(false, "length {} gave {:?}", len, other.map(|r| r.map(|f| f.map(|f| f.tag)))),
            }
        }

        #[test]
        fn a_huge_announced_message_costs_only_what_arrives(
            sent in 0usize..20_000,
            chunk in 1usize..8192,
        ) {
            // PostgreSQL's own limit: 1 GB may be announced; only `sent` bytes follow.
            let max = (1 << 30) - 2;
            let mut wire = vec![b'Q'];
            wire.extend_from_slice(&(max as i32).to_be_bytes());
            wire.extend(std::iter::repeat_n(b'x', sent));
            let mut reader = FrameReader::with_chunk(Trickle::default(), max, chunk);
            reader.get_mut().chunks.push_back(wire);
            prop_assert!(reader.next().now_or_never().is_none(), "a partial frame must wait");
            let held = reader.buf.capacity();
            prop_assert!(held <= 2 * (sent + 5) + 2 * chunk, "{} bytes held for {} received", held, sent + 5);
        }

        #[test]
        fn arbitrary_startup_packets_never_panic_and_ignore_chunking(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            code in prop_oneof![
                Just(PROTOCOL_V3), Just(PROTOCOL_V3 + 1), Just(SSL_REQUEST),
                Just(GSSENC_REQUEST), Just(CANCEL_REQUEST), any::<i32>(),
            ],
            len_delta in prop_oneof![Just(0i64), -12i64..12, any::<i32>().prop_map(i64::from)],
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let len = (8 + body.len() as i64 + len_delta).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
            let mut wire = len.to_be_bytes().to_vec();
            wire.extend_from_slice(&code.to_be_bytes());
            wire.extend_from_slice(&body);
            let whole = startup_outcome(vec![wire.clone()]);
            let pieces = startup_outcome(cut(&wire, &cuts));
            prop_assert_eq!(&whole, &pieces);
            if !(8..=MAX_STARTUP_PACKET as i64).contains(&i64::from(len)) {
                prop_assert_eq!(whole, Err("08P01".to_owned()));
            }
        }
    }

    /// A startup packet read from `chunks` then end of stream: the request, or the
    /// error's SQLSTATE.
    fn startup_outcome(chunks: Vec<Vec<u8>>) -> Result<StartupRequest, String> {
        let mut socket = Trickle {
            chunks: chunks.into(),
            closed: true,
        };
        match read_startup(&mut socket, MAX_STARTUP_PACKET).now_or_never() {
            Some(r) => r.map_err(|e| e.sqlstate().to_owned()),
            None => Err("pending".into()),
        }
    }
}
