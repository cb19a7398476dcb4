//! The ten Superfone event notification types, by the name the vendor puts
//! in a payload's `event` field.

use std::fmt;

/// One Superfone event notification type (payload reference, "Available events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    AllCalls,
    MissedCall,
    CdrRecordingAvailable,
    CdrSummaryReady,
    CustomerCreate,
    CustomerChange,
    TaskCreate,
    TaskChange,
    TaskNotifyTime,
    TaskDueTime,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::AllCalls,
        EventKind::MissedCall,
        EventKind::CdrRecordingAvailable,
        EventKind::CdrSummaryReady,
        EventKind::CustomerCreate,
        EventKind::CustomerChange,
        EventKind::TaskCreate,
        EventKind::TaskChange,
        EventKind::TaskNotifyTime,
        EventKind::TaskDueTime,
    ];

    /// The name Superfone puts in the payload's `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AllCalls => "ALL_CALLS",
            EventKind::MissedCall => "MISSED_CALL",
            EventKind::CdrRecordingAvailable => "CDR_RECORDING_AVAILABLE",
            EventKind::CdrSummaryReady => "CDR_SUMMARY_READY",
            EventKind::CustomerCreate => "CUSTOMER_CREATE",
            EventKind::CustomerChange => "CUSTOMER_CHANGE",
            EventKind::TaskCreate => "TASK_CREATE",
            EventKind::TaskChange => "TASK_CHANGE",
            EventKind::TaskNotifyTime => "TASK_NOTIFY_TIME",
            EventKind::TaskDueTime => "TASK_DUE_TIME",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Lower-case name: the default topic suffix and the schema file stem.
    pub fn slug(self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
