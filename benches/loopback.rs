//! The real server over real loopback sockets: the release binary is started as a child process
//! (`CARGO_BIN_EXE_periode-sse`, built by `cargo bench` itself), users are created through its
//! admin API, and the bench opens real streams with real tokens.
//!
//! - `fanout_loopback/{1,100,1000}`: one transaction POSTed for a user with that many open
//!   streams; the time is from the POST's first byte until every stream has the notification.
//!   The database sits on `/dev/shm` when there is one, so that the commit's fsync (a property
//!   of the disk, measured by `periode-density` instead) does not drown the fan-out itself; set
//!   `PERIODE_BENCH_DB_DIR` to measure on another file system.
//! - `heartbeat_round/periode_sse/10000`: 10 000 idle streams, server at `--heartbeat 1`. The
//!   wall time of a round is the heartbeat period, so what is measured is the server's CPU time
//!   (from `/proc/PID/task/*/schedstat`, user and system together) spent while 10 000 heartbeats
//!   are delivered: "time" per iteration is CPU per 10 000 heartbeats, and the throughput line
//!   reads heartbeats per CPU-second. `heartbeat_round/kernel_floor/9000` is the same frame
//!   written with one `write` per socket by a bare loop, nothing else: the kernel's share.
//!
//! Run: `cargo bench --bench loopback`. `cargo bench --no-run` only builds it.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use periode_kit::{procfs, setup, sock, wire};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wire::{Chunked, Kind, SseScan};

const SECRET: &str = "loopback-bench-secret-0123456789abcdef";

struct Server {
    spawned: setup::Spawned,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start(heartbeat_secs: u64, users: u64, max_per_user: usize) -> Server {
        let base =
            std::env::var_os("PERIODE_BENCH_DB_DIR").map(PathBuf::from).unwrap_or_else(|| {
                let shm = PathBuf::from("/dev/shm");
                if shm.is_dir() {
                    shm
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("periode-bench.{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench folder");
        let addr = SocketAddr::from(([127, 0, 0, 1], setup::free_port().expect("a free port")));
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_periode-sse"));
        let extra = vec!["--max-conns-per-user".to_string(), max_per_user.to_string()];
        let (spawned, _) = setup::spawn_server(
            &bin,
            &dir.join("bench.db"),
            addr,
            heartbeat_secs,
            SECRET,
            &dir.join("server.log"),
            &extra,
        )
        .expect("the server starts");
        setup::create_users(addr, SECRET.as_bytes(), 1..=users, 4, Duration::from_secs(60))
            .expect("users created");
        Server { spawned, addr, dir }
    }

    fn pid(&self) -> u32 {
        self.spawned.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        setup::stop_server(&mut self.spawned, Duration::from_secs(6));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One client stream: its socket and the decoders of what it receives.
struct Client {
    sock: TcpStream,
    requested: bool,
    head: Vec<u8>,
    body: bool,
    chunked: Chunked,
    sse: SseScan,
    blocks: u64,
    notifications: u64,
    heartbeats: u64,
}

/// Many client streams on one poll.
struct Clients {
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    notifications: u64,
    heartbeats: u64,
}

impl Clients {
    /// Opens `n` streams, user `user_of(i)` each, and waits until every one has its opening
    /// events. Source addresses are spread over 127.0.0.2-9 so that ports never run short.
    fn open(addr: SocketAddr, n: usize, user_of: impl Fn(usize) -> u64) -> Clients {
        let poll = Poll::new().expect("epoll");
        let mut clients = Vec::with_capacity(n);
        let mut pending = 0usize;
        let mut c = Clients {
            poll,
            events: Events::with_capacity(4096),
            clients: Vec::new(),
            scratch: vec![0; 64 * 1024],
            notifications: 0,
            heartbeats: 0,
        };
        for i in 0..n {
            let from = Some(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
            let mut sock = sock::connect_from(from, addr).expect("connect");
            c.poll
                .registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .expect("register");
            clients.push(Client {
                sock,
                requested: false,
                head: Vec::new(),
                body: false,
                chunked: Chunked::new(),
                sse: SseScan::new(),
                blocks: 0,
                notifications: 0,
                heartbeats: 0,
            });
            pending += 1;
            // Keep the listen backlog from overflowing: at most 512 connects in flight.
            if pending >= 512 || i + 1 == n {
                c.clients.append(&mut clients);
                c.send_requests(&user_of);
                let opened = c.clients.len();
                c.pump_until(Duration::from_secs(30), |c| {
                    c.clients[..opened].iter().all(|s| s.blocks > 0)
                });
                pending = 0;
            }
        }
        assert!(c.clients.iter().all(|s| s.blocks > 0), "every stream opened");
        c
    }

    fn send_requests(&mut self, user_of: &impl Fn(usize) -> u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, client) in self.clients.iter_mut().enumerate() {
            if client.requested {
                continue;
            }
            let token = setup::user_token(user_of(i), SECRET.as_bytes());
            let request = format!(
                "GET /api/periode-limit/notifications/stream HTTP/1.1\r\nHost: bench\r\n\
                 Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            // A fresh non-blocking socket may still be connecting: retry briefly.
            let mut sent = 0;
            while sent < request.len() {
                match client.sock.write(&request.as_bytes()[sent..]) {
                    Ok(n) => sent += n,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(50))
                    }
                    Err(e) => panic!("cannot send a stream request: {e}"),
                }
            }
            client.requested = true;
        }
    }

    /// Runs the poll until `done` holds or `limit` passes.
    fn pump_until(&mut self, limit: Duration, done: impl Fn(&Clients) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = self.poll.poll(&mut self.events, Some(wait));
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for i in ready {
                self.drain(i);
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let Some(client) = self.clients.get_mut(i) else { return };
        loop {
            let n = match client.sock.read(&mut self.scratch) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut kinds: Vec<Kind> = Vec::new();
            let mut body: &[u8] = &self.scratch[..n];
            let rest;
            if !client.body {
                client.head.extend_from_slice(body);
                match wire::parse_stream_head(&client.head) {
                    Ok(Some((200, len, _))) => {
                        client.body = true;
                        rest = client.head[len..].to_vec();
                        client.head = Vec::new();
                        body = &rest;
                    }
                    Ok(None) => continue,
                    other => panic!("stream refused: {other:?}"),
                }
            }
            let sse = &mut client.sse;
            let _ = client.chunked.feed(body, |d| sse.feed(d, |k| kinds.push(k)));
            for kind in kinds {
                client.blocks += 1;
                match kind {
                    Kind::Notification => {
                        client.notifications += 1;
                        self.notifications += 1;
                    }
                    Kind::Heartbeat => {
                        client.heartbeats += 1;
                        self.heartbeats += 1;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A blocking keep-alive connection that POSTs transactions for one user.
struct Poster {
    sock: std::net::TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Poster {
    fn new(addr: SocketAddr, user: u64) -> Poster {
        let sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).ok();
        sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let token = setup::user_token(user, SECRET.as_bytes());
        let body = r#"{"amount":1}"#;
        let request = format!(
            "POST /api/periode-limit/transactions HTTP/1.1\r\nHost: bench\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Poster { sock, request, buf: Vec::new() }
    }

    fn send(&mut self) {
        self.sock.write_all(&self.request).expect("POST sent");
    }

    fn answer(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some((status, len, _))) = wire::parse_response(&self.buf) {
                assert_eq!(status, 201, "the transaction is accepted");
                self.buf.drain(..len);
                return;
            }
            let n = self.sock.read(&mut chunk).expect("POST answered");
            assert!(n > 0, "the server closed the POST connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn raise_fd_limit(needed: u64) -> bool {
    procfs::raise_open_files_limit() >= needed
}

fn bench_fanout(c: &mut Criterion) {
    if !raise_fd_limit(1100) {
        eprintln!("fanout_loopback skipped: needs 1100 open files");
        return;
    }
    let server = Server::start(30, 1, 2000);
    let mut group = c.benchmark_group("fanout_loopback");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));
    for &n in &[1usize, 100, 1000] {
        let mut clients = Clients::open(server.addr, n, |_| 1);
        let mut poster = Poster::new(server.addr, 1);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let target = clients.notifications + n as u64;
                    let started = Instant::now();
                    poster.send();
                    clients.pump_until(Duration::from_secs(10), |c| c.notifications >= target);
                    total += started.elapsed();
                    assert!(clients.notifications >= target, "every stream got the event");
                    poster.answer();
                }
                total
            })
        });
        drop(clients);
        // Let the server reap the closed streams before the next size opens its own.
        std::thread::sleep(Duration::from_millis(300));
    }
    group.finish();
}

fn bench_heartbeat(c: &mut Criterion) {
    let n = 10_000usize;
    if !raise_fd_limit(n as u64 + 100) {
        eprintln!("heartbeat_round skipped: needs {} open files", n + 100);
        return;
    }
    let mut group = c.benchmark_group("heartbeat_round");
    // A round lasts the heartbeat period (1 s of wall time) whatever it costs: few, flat samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(n as u64));
    {
        let server = Server::start(1, (n / 100) as u64, 100);
        let pid = server.pid();
        let mut clients = Clients::open(server.addr, n, |i| (i / 100) as u64 + 1);
        group.bench_with_input(BenchmarkId::new("periode_sse", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut cpu_ns = 0u64;
                for _ in 0..iters {
                    let target = clients.heartbeats + n as u64;
                    let before = procfs::cpu(pid).map(|c| c.run_ns).unwrap_or(0);
                    clients.pump_until(Duration::from_secs(5), |c| c.heartbeats >= target);
                    let after = procfs::cpu(pid).map(|c| c.run_ns).unwrap_or(0);
                    cpu_ns += after.saturating_sub(before);
                }
                Duration::from_nanos(cpu_ns)
            })
        });
    }
    let pairs = 9_000usize;
    if raise_fd_limit(2 * pairs as u64 + 100) {
        group.throughput(Throughput::Elements(pairs as u64));
        let floor = KernelFloor::open(pairs);
        group.bench_with_input(BenchmarkId::new("kernel_floor", pairs), &pairs, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += floor.round();
                }
                total
            })
        });
    }
    group.finish();
}

/// The kernel's share of a heartbeat: the same chunk written once to each of `n` loopback
/// sockets by a bare loop, while another thread reads the far ends through epoll as a client
/// would. Measured as the writing thread's CPU time.
struct KernelFloor {
    writers: Vec<std::net::TcpStream>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl KernelFloor {
    fn open(n: usize) -> KernelFloor {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut readers = Vec::with_capacity(n);
        let mut writers = Vec::with_capacity(n);
        for i in 0..n {
            let from = Some(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
            let sock = sock::connect_from(from, addr).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            accepted.set_nonblocking(true).ok();
            writers.push(accepted);
            readers.push(sock);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut poll = Poll::new().expect("epoll");
            for (i, sock) in readers.iter_mut().enumerate() {
                poll.registry().register(sock, Token(i), Interest::READABLE).expect("register");
            }
            let mut events = Events::with_capacity(4096);
            let mut buf = vec![0u8; 64 * 1024];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
                for event in events.iter() {
                    let sock = &mut readers[event.token().0];
                    while let Ok(n) = sock.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        });
        KernelFloor { writers, stop, reader: Some(reader) }
    }

    /// One heartbeat to every socket; returns this thread's CPU time for it.
    fn round(&self) -> Duration {
        let mut frame = Vec::new();
        periode_sse::sse::encode_chunk(&mut frame, |o| {
            periode_sse::sse::encode_heartbeat(o, 1_760_000_000_123)
        });
        let before = thread_cpu();
        for mut sock in &self.writers {
            let _ = sock.write(&frame);
        }
        let spent = thread_cpu() - before;
        // Give the reader time to drain, as the heartbeat period would.
        std::thread::sleep(Duration::from_millis(20));
        spent
    }
}

impl Drop for KernelFloor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, bench_fanout, bench_heartbeat);
criterion_main!(benches);
