//! The batcher's own connection to Redis, written and read by the batcher's task itself.
//!
//! A round trip's commands go out in one write, and their replies are read by the task that
//! sent them. A `redis::aio` connection has a task of its own between its callers and the
//! socket; on a busy worker every hand-off between two tasks waits for all the tasks queued
//! before it, and that task cost two such hand-offs per round trip, on the path of every
//! charged call. The connection speaks the part of RESP2 the batcher needs; it connects
//! lazily, and is dropped (to be made again by the next round trip) after any error, or when a
//! round trip is abandoned half-way (a timeout), since its replies may still be on their way.

use std::io;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// A reply. Bulk strings the batcher needs only as text (stream entry ids, statuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …`: the command failed; the connection is fine.
    Error(String),
    /// `:1`
    Int(i64),
    /// `$…`, or nil.
    Bulk(Option<Vec<u8>>),
    /// `*…`, or nil.
    Array(Option<Vec<Reply>>),
}

/// The arguments of one command, encoded as they go on the wire.
#[derive(Debug, Default)]
pub struct Args {
    count: usize,
    wire: Vec<u8>,
}

impl Args {
    /// Adds a string argument.
    pub fn arg(&mut self, value: impl AsRef<[u8]>) -> &mut Self {
        let value = value.as_ref();
        self.wire.push(b'$');
        self.wire
            .extend_from_slice(itoa::Buffer::new().format(value.len()).as_bytes());
        self.wire.extend_from_slice(b"\r\n");
        self.wire.extend_from_slice(value);
        self.wire.extend_from_slice(b"\r\n");
        self.count += 1;
        self
    }

    /// Adds a number argument.
    pub fn int(&mut self, value: impl itoa::Integer) -> &mut Self {
        self.arg(itoa::Buffer::new().format(value))
    }
}

/// The commands of one round trip.
#[derive(Debug, Default)]
pub struct Commands {
    count: usize,
    wire: Vec<u8>,
}

impl Commands {
    /// Adds a command made of `parts`, in order (the first begins with its name).
    pub fn push(&mut self, parts: &[&Args]) {
        let count: usize = parts.iter().map(|p| p.count).sum();
        self.wire.push(b'*');
        self.wire
            .extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
        self.wire.extend_from_slice(b"\r\n");
        for part in parts {
            self.wire.extend_from_slice(&part.wire);
        }
        self.count += 1;
    }

    /// How many commands there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

trait Socket: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Socket for T {}

struct Open {
    socket: Pin<Box<dyn Socket>>,
    read: BytesMut,
}

/// One connection to Redis, made when first needed.
pub struct Connection {
    info: ConnectionInfo,
    open: Option<Open>,
}

impl Connection {
    /// A connection to the server `info` names, with its credentials and database.
    pub fn new(info: ConnectionInfo) -> Self {
        Self { info, open: None }
    }

    /// Sends `commands` in one write and reads one reply for each, in order. A command's
    /// failure is its [`Reply::Error`]; `Err` means the connection failed, and it is dropped.
    pub async fn round_trip(&mut self, commands: &Commands) -> io::Result<Vec<Reply>> {
        // Taken out for the round trip: if this future is dropped half-way, the connection
        // goes with it.
        let mut open = match self.open.take() {
            Some(open) => open,
            None => self.connect().await?,
        };
        let replies = open.round_trip(commands).await?;
        self.open = Some(open);
        Ok(replies)
    }

    async fn connect(&self) -> io::Result<Open> {
        let socket: Pin<Box<dyn Socket>> = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                socket.set_nodelay(true)?;
                Box::pin(socket)
            }
            ConnectionAddr::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
            other => {
                return Err(io::Error::other(format!(
                    "unsupported Redis address {other}"
                )));
            }
        };
        let mut open = Open {
            socket,
            read: BytesMut::with_capacity(4096),
        };
        let settings = self.info.redis_settings();
        let mut hello = Commands::default();
        if let Some(password) = settings.password() {
            let mut auth = Args::default();
            auth.arg("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            hello.push(&[&auth]);
        }
        if settings.db() != 0 {
            hello.push(&[Args::default().arg("SELECT").int(settings.db())]);
        }
        if !hello.is_empty() {
            for reply in open.round_trip(&hello).await? {
                if let Reply::Error(e) = reply {
                    return Err(io::Error::other(format!(
                        "redis refused the connection: {e}"
                    )));
                }
            }
        }
        Ok(open)
    }
}

impl Open {
    async fn round_trip(&mut self, commands: &Commands) -> io::Result<Vec<Reply>> {
        self.socket.write_all(&commands.wire).await?;
        let mut replies = Vec::with_capacity(commands.count);
        while replies.len() < commands.count {
            match parse(&self.read)? {
                Some((reply, used)) => {
                    self.read.advance(used);
                    replies.push(reply);
                }
                None => {
                    if self.socket.read_buf(&mut self.read).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        Ok(replies)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis: {what}"))
}

/// Parses one reply from the start of `buf`: the reply and the bytes it took, or `None` when
/// `buf` does not hold all of it yet.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err(invalid("empty reply line"));
    };
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> io::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("malformed number"))
    };
    Ok(Some(match kind {
        b'+' => (Reply::Status(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Int(number()?), next),
        b'$' => match usize::try_from(number()?) {
            Err(_) => (Reply::Bulk(None), next),
            Ok(len) => {
                let Some(body) = buf.get(next..next + len + 2) else {
                    return Ok(None);
                };
                if !body.ends_with(b"\r\n") {
                    return Err(invalid("bulk string without its end"));
                }
                (Reply::Bulk(Some(body[..len].to_vec())), next + len + 2)
            }
        },
        b'*' => match usize::try_from(number()?) {
            Err(_) => (Reply::Array(None), next),
            Ok(len) => {
                let mut items = Vec::with_capacity(len.min(1024));
                let mut at = next;
                for _ in 0..len {
                    let Some((item, used)) = parse(&buf[at..])? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at += used;
                }
                (Reply::Array(Some(items)), at)
            }
        },
        _ => return Err(invalid("unknown reply type")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut commands = Commands::default();
        let mut head = Args::default();
        head.arg("EVALSHA").arg("ab");
        let mut args = Args::default();
        args.arg("k").int(42_u64).arg("");
        commands.push(&[&head, &args]);
        commands.push(&[Args::default().arg("PING")]);
        assert_eq!(commands.len(), 2);
        assert_eq!(
            commands.wire,
            b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\nk\r\n$2\r\n42\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type_and_waits_for_the_rest() {
        let wire: &[u8] =
            b"*4\r\n:1700000000000\r\n:-2\r\n$-1\r\n*2\r\n$3\r\na\r\n\r\n+OK\r\n-NOSCRIPT no\r\n*-1\r\n";
        let (reply, used) = parse(wire).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Int(1_700_000_000_000),
                Reply::Int(-2),
                Reply::Bulk(None),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a\r\n".to_vec())),
                    Reply::Status("OK".into()),
                ])),
            ]))
        );
        let rest = &wire[used..];
        assert_eq!(
            parse(rest).unwrap().unwrap(),
            (Reply::Error("NOSCRIPT no".into()), 14)
        );
        assert_eq!(parse(&rest[14..]).unwrap().unwrap().0, Reply::Array(None));
        // Every strict prefix of a reply is incomplete, never an error.
        for cut in 0..used {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_is_not_resp() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$1\r\nab\r\n").is_err());
        assert!(parse(b"\r\n").is_err());
    }
}
