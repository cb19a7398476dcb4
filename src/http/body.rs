//! Reading one request body within the limits: the size limit, and the
//! budget of body bytes that all requests together may hold at once.
//!
//! A delivery holds its body, the parsed tree and the Avro record (plus
//! librdkafka's copy of it) until the broker answers: several times the
//! body. Unbounded, a burst of large summaries (a long call's transcript is
//! megabytes) grows the process past its memory limit, and the OOM kill
//! loses every delivery in flight, which Superfone never sends again. So a
//! request reserves its body's size before the body is read and keeps the
//! reservation until it is answered; when the budget is taken, it waits for
//! room (under the body-read timeout). Small bodies never wait: an ordinary
//! event is a few KiB, and clients that hold large bodies back (slowly sent,
//! or many at once) must not stop them. They still count, so large ones
//! wait for them; their memory is bounded by the connection limit, as it was
//! before the budget. No queue either: a large request that fits in what is
//! free goes ahead of one that waits for more.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Bodies up to this size never wait for the budget (hyper's HTTP/1 read
/// buffer: the size a connection holds anyway).
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// The bytes of request bodies held at once, across all requests.
#[derive(Debug)]
pub struct BodyBudget {
    capacity: usize,
    /// Reservations up to this size are granted at once, whatever is held.
    small: usize,
    held: AtomicUsize,
    freed: Notify,
}

/// Part of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `capacity` bytes that never makes a body of `small`
    /// bytes or less wait.
    pub fn new(capacity: usize, small: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            capacity,
            small,
            held: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The budget's size (`server.max_body_bytes_in_flight`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, waiting until that much is free (a small body does
    /// not wait). A request larger than the whole budget is let in once
    /// nothing else is held.
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        loop {
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(reservation) = self.try_reserve(bytes) {
                return reservation;
            }
            freed.await;
        }
    }

    /// Reserves `bytes` if they are free now, or small.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        if bytes <= self.small {
            self.held.fetch_add(bytes, Ordering::AcqRel);
            return Some(Reservation {
                budget: Arc::clone(self),
                bytes,
            });
        }
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            if held != 0 && held.saturating_add(bytes) > self.capacity {
                return None;
            }
            match self.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: Arc::clone(self),
                        bytes,
                    })
                }
                Err(now) => held = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back what is reserved beyond `bytes` (a body without a declared
    /// length reserves the limit, and keeps only what it turned out to be).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads the whole body, refusing it once it passes `limit` bytes. It is
/// copied once at most: a body that arrives in one chunk is kept as it came,
/// one in several is gathered into a buffer sized by `declared_length`, so a
/// large body never sits in memory twice.
pub async fn read<B>(
    body: B,
    declared_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| BodyError::Read(Box::new(error)))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        length = length.saturating_add(data.remaining());
        if length > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if let Some(buffer) = &mut gathered {
            buffer.put(data);
            continue;
        }
        match first.take() {
            None => first = Some(data.copy_to_bytes(data.remaining())),
            Some(earlier) => {
                let capacity = declared_length
                    .map_or(0, |declared| declared.min(limit as u64) as usize)
                    .max(length);
                let mut buffer = BytesMut::with_capacity(capacity);
                buffer.put(earlier);
                buffer.put(data);
                gathered = Some(buffer);
            }
        }
    }
    Ok(match gathered {
        Some(buffer) => buffer.freeze(),
        None => first.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use std::time::Duration;

    fn chunked(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk))))
            .collect::<Vec<_>>();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_in_one_chunk_or_several() {
        let one = read(Full::new(Bytes::from_static(b"{\"a\":1}")), Some(7), 100)
            .await
            .unwrap();
        assert_eq!(&one[..], b"{\"a\":1}");
        let several = read(chunked(&[b"{\"a\"", b":", b"1}"]), None, 100)
            .await
            .unwrap();
        assert_eq!(&several[..], b"{\"a\":1}");
        let empty = read(chunked(&[]), None, 100).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_whatever_it_declared() {
        let error = read(chunked(&[b"12345", b"67890", b"1"]), Some(4), 10)
            .await
            .unwrap_err();
        assert!(
            matches!(error, BodyError::TooLarge { limit: 10 }),
            "{error}"
        );
        assert!(read(chunked(&[b"12345", b"67890"]), None, 10).await.is_ok());
    }

    #[tokio::test]
    async fn a_reservation_waits_for_room_and_small_ones_pass_a_waiting_large_one() {
        let budget = BodyBudget::new(100, 0);
        let first = budget.reserve(60).await;
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.reserve(60).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "60 + 60 does not fit in 100");
        let small = tokio::time::timeout(Duration::from_millis(1), budget.reserve(30))
            .await
            .expect("30 fits beside 60 although a larger request waits");
        assert_eq!(budget.held(), 90);
        drop(small);
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(second.bytes(), 60);
        assert_eq!(budget.held(), 60);
    }

    #[tokio::test]
    async fn a_small_body_never_waits_and_counts_against_the_large_ones() {
        let budget = BodyBudget::new(100, 10);
        let large = budget.try_reserve(95).unwrap();
        let small = budget.try_reserve(10).expect("small bodies never wait");
        assert_eq!(budget.held(), 105);
        drop(large);
        assert!(
            budget.try_reserve(91).is_none(),
            "10 are held by the small one"
        );
        assert!(budget.try_reserve(90).is_some());
        drop(small);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_budget_goes_alone_and_shrinks() {
        let budget = BodyBudget::new(100, 0);
        let mut oversized = budget.try_reserve(250).expect("nothing else is held");
        assert!(budget.try_reserve(1).is_none(), "the budget is taken");
        oversized.shrink_to(40);
        assert_eq!(budget.held(), 40);
        let other = budget.try_reserve(60).expect("60 fits beside 40");
        drop(oversized);
        drop(other);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_wait_under_a_timeout_gives_up_without_holding_anything() {
        let budget = BodyBudget::new(100, 0);
        let held = budget.reserve(100).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), budget.reserve(10)).await;
        assert!(gave_up.is_err());
        assert_eq!(budget.held(), 100);
        drop(held);
        assert_eq!(budget.held(), 0);
        assert!(budget.try_reserve(100).is_some());
    }
}
