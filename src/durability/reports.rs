//! Delivery reports served on the runtime, without a polling thread.
//!
//! rdkafka's `FutureProducer` serves librdkafka's report queue from a thread
//! of its own: every produce response wakes librdkafka's broker thread, which
//! wakes that polling thread, which wakes the runtime worker awaiting the
//! record. Here librdkafka calls [`on_nonempty`] from its broker thread when
//! the queue stops being empty; that wakes one runtime task, which serves the
//! queue on the runtime, so each report completes its record's future where
//! that future is awaited. One thread and one wake-up less per produce
//! request.
//!
//! The crate's only `unsafe` code: four librdkafka functions on a handle of the
//! producer's main queue, and the callback. Each has its SAFETY note.
#![allow(unsafe_code)]

use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, ProducerContext};
use std::ffi::c_void;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Events served in one turn of the serving task before it lets other tasks
/// run; each event is a batch of reports (one produce request).
const EVENTS_PER_TURN: usize = 64;

/// A producer whose events (delivery reports, statistics, errors) a task on
/// the runtime serves as soon as librdkafka queues them. Dereferences to the
/// `BaseProducer`.
pub struct ServedProducer<C: ProducerContext + 'static> {
    // Declared first, so dropped first: librdkafka requires every queue
    // handle destroyed before the client it belongs to.
    watch: QueueWatch,
    producer: BaseProducer<C>,
}

impl<C: ProducerContext + 'static> ServedProducer<C> {
    /// Starts serving `producer`'s events on `runtime`. The task ends when
    /// the returned producer is dropped.
    pub fn start(producer: BaseProducer<C>, runtime: &tokio::runtime::Handle) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let watch = QueueWatch::new(&producer, Arc::clone(&wake));
        let served = Arc::new(ServedProducer { watch, producer });
        runtime.spawn(serve(Arc::downgrade(&served), wake));
        served
    }

    /// Serves at most `EVENTS_PER_TURN` events; true when none is left.
    fn serve_some(&self) -> bool {
        for _ in 0..EVENTS_PER_TURN {
            if self.watch.is_empty() {
                return true;
            }
            // Serves one event: its delivery reports reach
            // `ProducerContext::delivery`.
            self.producer.poll(Duration::ZERO);
        }
        self.watch.is_empty()
    }
}

impl<C: ProducerContext + 'static> Deref for ServedProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

/// The serving task: drains the queue, then sleeps until librdkafka says it
/// is no longer empty. It holds the producer only while serving, so dropping
/// the last `Arc` elsewhere ends it.
async fn serve<C: ProducerContext + 'static>(served: Weak<ServedProducer<C>>, wake: Arc<Notify>) {
    loop {
        let Some(producer) = served.upgrade() else {
            return;
        };
        let drained = producer.serve_some();
        if let Some(last) = Arc::into_inner(producer) {
            // Dropped everywhere else while this turn ran. Dropping a
            // producer purges and flushes its queue (up to 500 ms): not on
            // the runtime.
            std::thread::spawn(move || drop(last));
            return;
        }
        if drained {
            // A wake-up that came during the turn is kept as a permit, so an
            // event queued after the last emptiness check is never missed.
            wake.notified().await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// A handle of the producer's main queue with the wake-up callback enabled;
/// dropping it disables the callback and wakes the serving task to end.
struct QueueWatch {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    wake: Arc<Notify>,
}

// SAFETY: librdkafka's queues are locked internally; a queue handle may be
// used and destroyed from any thread.
unsafe impl Send for QueueWatch {}
unsafe impl Sync for QueueWatch {}

impl QueueWatch {
    fn new<C: ProducerContext + 'static>(producer: &BaseProducer<C>, wake: Arc<Notify>) -> Self {
        use rdkafka::producer::Producer;
        // SAFETY: the client pointer is live for as long as `producer`; the
        // returned handle holds its own reference to the queue and is
        // destroyed in `Drop`, before the producer (`ServedProducer`'s field
        // order).
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        let queue = NonNull::new(queue).expect("librdkafka returned no main queue");
        // SAFETY: the opaque points at the `Notify` inside `wake`, which this
        // watch keeps alive until `Drop` has disabled the callback.
        // librdkafka calls the callback with the queue's lock held, and
        // disabling takes that lock, so no call outlives `Drop`.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(on_nonempty),
                Arc::as_ptr(&wake) as *mut c_void,
            );
        }
        QueueWatch { queue, wake }
    }

    fn is_empty(&self) -> bool {
        // SAFETY: the handle is live until `Drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.queue.as_ptr()) == 0 }
    }
}

impl Drop for QueueWatch {
    fn drop(&mut self) {
        // SAFETY: the handle is live; after these calls it is not used again.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
        self.wake.notify_one();
    }
}

/// Called by librdkafka, from its own threads and with the queue locked,
/// when an event lands on the empty queue: only wakes the serving task.
unsafe extern "C" fn on_nonempty(_client: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` that `QueueWatch::new` registered,
    // alive until its `Drop` disabled this callback (see there).
    let wake = unsafe { &*(opaque as *const Notify) };
    wake.notify_one();
}
