//! The supervisor's socket to the template: a `SOCK_SEQPACKET` pair,
//! fixed-size messages, and a pidfd passed along with `SCM_RIGHTS`.
//!
//! All through `rustix`, safely: its `sendmsg` and `recvmsg` take the
//! control buffer from the caller (on the stack here: no allocation) and
//! hand received descriptors over as `OwnedFd`s.

#![deny(unsafe_code)]

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown, SocketFlags, SocketType,
    recvmsg, sendmsg, socketpair,
};

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets: each
/// `send` arrives as one message, and a closed end reads as end of file.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Shuts both directions of a socket down: the other end reads end of file.
pub(crate) fn shutdown(sock: impl AsFd) {
    let _ = rustix::net::shutdown(sock, Shutdown::Both);
}

/// A message between the supervisor and the template: fixed size, plain
/// integers.
pub(crate) type Message = [u64; 3];

/// The bytes of a message.
const MESSAGE_BYTES: usize = size_of::<Message>();

/// Sends one message on a seqpacket socket, with a descriptor attached if
/// `fd` is given (`SCM_RIGHTS`). With `dont_wait`, a full socket buffer is
/// `WouldBlock` instead of a wait.
pub(crate) fn send_message(
    sock: impl AsFd,
    msg: &Message,
    fd: Option<BorrowedFd<'_>>,
    dont_wait: bool,
) -> io::Result<()> {
    let bytes = msg.map(u64::to_ne_bytes);
    let iov = [IoSlice::new(bytes.as_flattened())];
    let fds: &[BorrowedFd<'_>] = match &fd {
        Some(fd) => std::slice::from_ref(fd),
        None => &[],
    };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(pushed, "room for one descriptor");
    }
    let mut flags = SendFlags::NOSIGNAL;
    if dont_wait {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match sendmsg(&sock, &iov, &mut control, flags) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What came with a received message besides its words.
#[derive(Debug)]
pub(crate) enum Attached {
    /// No descriptor was sent.
    Nothing,
    /// The descriptor sent with it, now ours.
    Fd(OwnedFd),
    /// A descriptor was sent but the kernel could not install it here
    /// (`MSG_CTRUNC`): this process is at its descriptor limit (`EMFILE`), or
    /// the system at its own (`ENFILE`). The words arrived intact.
    Lost,
}

/// Receives one message and the descriptor attached to it, if any. `Ok(None)`
/// means the other end is closed; with `dont_wait`, an empty queue is
/// `WouldBlock`.
pub(crate) fn recv_message(
    sock: impl AsFd,
    dont_wait: bool,
) -> io::Result<Option<(Message, Attached)>> {
    let mut bytes = [0u8; MESSAGE_BYTES];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if dont_wait {
        flags |= RecvFlags::DONTWAIT;
    }
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        match recvmsg(&sock, &mut iov, &mut control, flags) {
            Ok(got) => break got,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut attached = Attached::Nothing;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            // One descriptor is ever sent; any other is closed as it drops.
            if let Some(fd) = fds.next() {
                attached = Attached::Fd(fd);
            }
        }
    }
    // The control buffer has room for the one descriptor ever sent, so a
    // truncation means the kernel could not give it a number here (it
    // closed it). A descriptor that did arrive is still ours.
    if got.flags.contains(ReturnFlags::CTRUNC) && matches!(attached, Attached::Nothing) {
        attached = Attached::Lost;
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    if got.bytes != MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a short message from the template process",
        ));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    Ok(Some(([word(0), word(1), word(2)], attached)))
}

/// Whether this process can open one more descriptor now: `Err(EMFILE)`
/// (or `ENFILE`) if not. Checked before a worker is asked for, whose pidfd
/// the kernel would otherwise have to drop on arrival.
pub(crate) fn descriptor_available(any: impl AsFd) -> io::Result<()> {
    descriptors_available(any, 1)
}

/// Whether this process can open `n` more descriptors now: `Err(EMFILE)` (or
/// `ENFILE`) if not. (They are opened, as copies of `any`, and closed.)
pub(crate) fn descriptors_available(any: impl AsFd, n: usize) -> io::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(rustix::io::fcntl_dupfd_cloexec(any.as_fd(), 0)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn messages_and_descriptors_cross_a_seqpacket_pair() {
        let (a, b) = seqpacket_pair().unwrap();
        assert_eq!(
            recv_message(&b, true).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        send_message(&a, &[1, 2, u64::MAX], None, true).unwrap();
        let (msg, attached) = recv_message(&b, true).unwrap().unwrap();
        assert_eq!(msg, [1, 2, u64::MAX]);
        assert!(matches!(attached, Attached::Nothing));
        let sent = super::super::sync::new_eventfd().unwrap();
        send_message(&a, &[3, 4, 5], Some(sent.as_fd()), false).unwrap();
        let (msg, attached) = recv_message(&b, false).unwrap().unwrap();
        assert_eq!(msg, [3, 4, 5]);
        let Attached::Fd(got) = attached else {
            panic!("no descriptor: {attached:?}");
        };
        assert_ne!(got.as_raw_fd(), sent.as_raw_fd());
        // The same eventfd: a signal through one is read through the other.
        super::super::sync::eventfd_signal(&sent);
        assert_eq!(super::super::sync::eventfd_drain(&got), 1);
        descriptor_available(&got).unwrap();
        shutdown(&a);
        assert!(recv_message(&b, false).unwrap().is_none(), "end of file");
    }
}
