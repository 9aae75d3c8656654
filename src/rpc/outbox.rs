//! A connection's outgoing messages. Call tasks, event forwarders and streams queue whole
//! encoded messages here; the connection task takes them out in batches and writes them
//! itself, so an idle connection costs no writer task and no pre-allocated channel block,
//! and a reply answered in the connection task goes out without waking anyone.
//!
//! The bound is in bytes, not messages: a client that stops reading can make the daemon
//! hold at most `LIMIT` plus one message (a single message may be up to the 32 MiB
//! protocol maximum).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;

use bytes::BytesMut;
use tokio::sync::Notify;

/// Queued bytes above which senders wait (and `try_send` fails).
pub const LIMIT: usize = 1024 * 1024;

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes senders waiting for room.
    room: Notify,
}

#[derive(Default)]
struct State {
    msgs: VecDeque<BytesMut>,
    bytes: usize,
    /// The peer is gone: nothing more will be written.
    closed: bool,
    /// The connection task, once it has waited: woken when another task queues a message
    /// or calls [`Outbox::wake`]. A slot rather than a `Notify`, so the waiting connection
    /// holds no `Notified` future: it registers here and checks its state on every poll.
    conn: Option<Waker>,
}

/// Why `push` did not queue a message.
enum Refused {
    /// Over the limit: the message comes back to be retried.
    Full(BytesMut),
    Closed,
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, msg: BytesMut, force: bool) -> Result<(), Refused> {
        let mut s = self.state();
        if s.closed {
            return Err(Refused::Closed);
        }
        if !force && s.bytes >= LIMIT {
            return Err(Refused::Full(msg));
        }
        s.bytes += msg.len();
        s.msgs.push_back(msg);
        // The connection task's own replies (`force`) need no wake-up: it looks at the
        // queue before it waits again.
        let conn = if force { None } else { s.conn.take() };
        drop(s);
        if let Some(w) = conn {
            w.wake();
        }
        Ok(())
    }

    /// For the connection task, before it waits: wake `waker` on the next message queued
    /// by another task or the next [`Outbox::wake`]. Returns whether messages are queued
    /// already (then it should not wait).
    pub fn register(&self, waker: &Waker) -> bool {
        let mut s = self.state();
        match &s.conn {
            Some(w) if w.will_wake(waker) => {}
            _ => s.conn = Some(waker.clone()),
        }
        !s.msgs.is_empty()
    }

    /// The connection task has ended: keep nothing of it alive (a waker holds the task's
    /// memory).
    pub fn unregister(&self) {
        let conn = self.state().conn.take();
        drop(conn);
    }

    /// Wakes the connection task (a close was requested, keepalive turned on, a call
    /// finished). It rechecks everything it waits for after registering, so a wake-up
    /// between its check and its wait is never lost.
    pub fn wake(&self) {
        let conn = self.state().conn.take();
        if let Some(w) = conn {
            w.wake();
        }
    }

    /// Queues a message, waiting while the queue is over its limit so a client that does
    /// not read holds back only its own work. False once the connection is closed.
    pub async fn send(&self, mut msg: BytesMut) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a drain between the check and the wait is
            // not missed.
            room.as_mut().enable();
            match self.push(msg, false) {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(back)) => msg = back,
            }
            room.await;
        }
    }

    /// Queues a message unless the queue is over its limit or closed.
    pub fn try_send(&self, msg: BytesMut) -> bool {
        self.push(msg, false).is_ok()
    }

    /// Queues a message whatever the queue holds: for the connection task's own replies,
    /// which it writes itself (it stops reading while the queue is over its limit, so
    /// this adds at most one message per call read). Wakes nobody.
    pub fn force(&self, msg: BytesMut) {
        let _ = self.push(msg, true);
    }

    /// True while the queue holds more than its limit.
    pub fn is_full(&self) -> bool {
        self.state().bytes >= LIMIT
    }

    /// Takes queued messages into `out` until it holds `batch` bytes or `stop_after`
    /// returns true for a message just taken (that message ends the batch). Returns
    /// whether `stop_after` fired.
    pub fn take(
        &self,
        out: &mut BytesMut,
        batch: usize,
        mut stop_after: impl FnMut(&BytesMut) -> bool,
    ) -> bool {
        let mut s = self.state();
        let mut stopped = false;
        let mut taken = 0;
        while out.len() < batch {
            let Some(m) = s.msgs.pop_front() else { break };
            taken += m.len();
            stopped = stop_after(&m);
            if out.is_empty() {
                *out = m;
            } else {
                out.extend_from_slice(&m);
            }
            if stopped {
                break;
            }
        }
        if s.msgs.is_empty() {
            // An idle connection keeps no queue storage.
            s.msgs = VecDeque::new();
        }
        let was_full = s.bytes >= LIMIT;
        s.bytes -= taken;
        let has_room = s.bytes < LIMIT;
        drop(s);
        if was_full && has_room {
            self.room.notify_waiters();
        }
        stopped
    }

    /// The peer is gone: drop what is queued and fail every sender from now on.
    pub fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        s.msgs = VecDeque::new();
        s.bytes = 0;
        drop(s);
        self.room.notify_waiters();
    }
}

/// A waker that records being woken, for the tests of this module and of `client`.
#[cfg(test)]
pub(crate) mod test_waker {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Default)]
    pub(crate) struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        /// Whether it was woken since the last look.
        pub(crate) fn taken(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_waker::Flag;
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_connection_is_woken_by_other_senders_not_by_its_own_replies() {
        let o = Outbox::default();
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        assert!(!o.register(&waker));
        o.force(msg(1));
        assert!(!flag.taken());
        assert!(o.register(&waker), "a queued message is reported");
        assert!(o.try_send(msg(1)));
        assert!(flag.taken());
        // Woken once per registration.
        assert!(o.try_send(msg(1)));
        assert!(!flag.taken());
        // Closing (a write error) keeps the registration: a call finishing afterwards
        // must still wake the task that waits for it.
        o.register(&waker);
        o.close();
        o.wake();
        assert!(flag.taken());
        o.register(&waker);
        o.unregister();
        o.wake();
        assert!(!flag.taken());
    }

    fn msg(n: usize) -> BytesMut {
        BytesMut::from(&vec![7u8; n][..])
    }

    #[test]
    fn bounded_by_bytes_not_count() {
        let o = Outbox::default();
        assert!(o.try_send(msg(LIMIT - 1)));
        // Under the limit by one byte: one more message fits whatever its size.
        assert!(o.try_send(msg(100)));
        assert!(o.is_full());
        assert!(!o.try_send(msg(1)));
        let mut out = BytesMut::new();
        o.take(&mut out, usize::MAX, |_| false);
        assert_eq!(out.len(), LIMIT + 99);
        assert!(!o.is_full());
        assert!(o.try_send(msg(1)));
    }

    #[test]
    fn take_stops_after_the_marked_message() {
        let o = Outbox::default();
        for n in 1..=3 {
            o.force(msg(n));
        }
        let mut out = BytesMut::new();
        assert!(o.take(&mut out, usize::MAX, |m| m.len() == 2));
        assert_eq!(out.len(), 3);
        out.clear();
        assert!(!o.take(&mut out, usize::MAX, |_| false));
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_room_and_close_fails_it() {
        let o = std::sync::Arc::new(Outbox::default());
        o.force(msg(LIMIT));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.send(msg(5)).await });
        tokio::task::yield_now().await;
        let mut out = BytesMut::new();
        o.take(&mut out, usize::MAX, |_| false);
        assert!(waiter.await.unwrap());
        o.force(msg(LIMIT));
        let o3 = o.clone();
        let waiter = tokio::spawn(async move { o3.send(msg(5)).await });
        tokio::task::yield_now().await;
        o.close();
        assert!(!waiter.await.unwrap());
        assert!(!o.try_send(msg(1)));
    }
}
