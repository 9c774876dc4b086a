//! Just enough of the Redis protocol (RESP2) to ask a test server a question, with no client
//! library: the helpers must work when the code under test is what is broken.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer of a Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`, and bulk strings (`$`) too: the tests only read text.
    Text(String),
    Integer(i64),
    Nil,
    Array(Vec<Reply>),
    Error(String),
}

impl Reply {
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Reply::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// Sends one command to the server at `addr` on a fresh connection and reads its answer.
pub(crate) fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    let timeout = Duration::from_secs(5);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    conn.write_all(&request)?;
    read_reply(&mut BufReader::new(conn))
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(invalid("connection closed before an answer"));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid(line))?;
    let number = || rest.parse::<i64>().map_err(|_| invalid(line));
    match kind {
        "+" => Ok(Reply::Text(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Integer(number()?)),
        "$" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Nil);
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            String::from_utf8(body)
                .map(Reply::Text)
                .map_err(|_| invalid("bulk string is not UTF-8"))
        }
        "*" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Nil);
            };
            (0..len)
                .map(|_| read_reply(reader))
                .collect::<io::Result<_>>()
                .map(Reply::Array)
        }
        _ => Err(invalid(line)),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a Redis answer: {what:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_of_answer() {
        let input = b"*5\r\n+OK\r\n$5\r\nab\r\nc\r\n:-3\r\n$-1\r\n-ERR no\r\n";
        let reply = read_reply(&mut &input[..]).unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Text("OK".into()),
                Reply::Text("ab\r\nc".into()),
                Reply::Integer(-3),
                Reply::Nil,
                Reply::Error("ERR no".into()),
            ])
        );
    }

    #[test]
    fn a_truncated_or_foreign_answer_is_an_error_not_a_panic() {
        for input in [&b""[..], b"$5\r\nab", b"?x\r\n", b":x\r\n", b"\r\n"] {
            assert!(read_reply(&mut &input[..]).is_err(), "{input:?}");
        }
    }
}
