//! Jobs and their queue, kept in the plugin's kv so a restart loses
//! nothing. Layout:
//!
//! | key | value |
//! |---|---|
//! | `seq` | the last sequence number handed out (JSON) |
//! | `job/<id>` | the [`Job`] record (JSON) |
//! | `input/<id>` | the job's input, raw |
//! | `output/<id>` | a finished job's output, raw |
//! | `queue/<255 - priority>/<id>` | present while the job waits |
//! | `state/<state>/<id>` | one index entry per job, for `GET /jobs?state=` |
//!
//! Ids start with the zero-padded sequence number, so listing `queue/`
//! yields the highest priority first and, within a priority, the oldest
//! first.

use depin_plugin_sdk::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting in the queue.
    Queued,
    /// Ran to its end (any exit status).
    Done,
    /// Stopped by a limit or a trap.
    Failed,
}

impl State {
    /// The name used in keys and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    /// Parses an API state name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(State::Queued),
            "done" => Some(State::Done),
            "failed" => Some(State::Failed),
            _ => None,
        }
    }
}

/// One submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub state: State,
    /// `sha256:<hex>` of the module.
    pub module: String,
    /// The most fuel the job may use.
    pub fuel_limit: u64,
    pub memory_mb: u32,
    pub priority: u8,
    pub submitter: String,
    /// Hex sha256 of the input.
    pub input_sha256: String,
    /// Set when the job has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
}

/// What running a job gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Fuel consumed, as the host measured it.
    pub fuel_used: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Why the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A job to enqueue.
pub struct Submission {
    pub module: String,
    pub input: Vec<u8>,
    pub fuel: u64,
    pub memory_mb: u32,
    pub priority: u8,
    pub submitter: String,
}

/// Why a job was not enqueued.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// `queue_limit` jobs are already waiting.
    Full(u32),
    /// The store refused; the message says why.
    Store(String),
}

fn store(e: kv::KvError) -> String {
    e.to_string()
}

/// How many jobs wait, counting at most `cap`.
pub fn queued(cap: u32) -> Result<u32, String> {
    Ok(kv::list_keys("queue/", cap).map_err(store)?.len() as u32)
}

/// Stores and enqueues a job; returns its id.
pub fn enqueue(s: Submission, queue_limit: u32) -> Result<Job, EnqueueError> {
    let waiting = queued(queue_limit).map_err(EnqueueError::Store)?;
    if waiting >= queue_limit {
        return Err(EnqueueError::Full(queue_limit));
    }
    let seq = kv::get_json::<u64>("seq")
        .map_err(|e| EnqueueError::Store(e.to_string()))?
        .unwrap_or(0)
        + 1;
    let input_sha256 = hex::encode(Sha256::digest(&s.input));
    // The content hash keeps ids unique even if two submissions raced for
    // the same sequence number.
    let mut h = Sha256::new();
    for part in [
        s.module.as_bytes(),
        input_sha256.as_bytes(),
        s.submitter.as_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    h.update(s.fuel.to_le_bytes());
    h.update([s.priority]);
    let id = format!("{seq:012}-{}", &hex::encode(h.finalize())[..8]);
    let job = Job {
        id: id.clone(),
        state: State::Queued,
        module: s.module,
        fuel_limit: s.fuel,
        memory_mb: s.memory_mb,
        priority: s.priority,
        submitter: s.submitter,
        input_sha256,
        result: None,
    };
    let write = || -> Result<(), kv::KvError> {
        kv::set_json("seq", &seq)?;
        kv::set(&format!("input/{id}"), &s.input)?;
        kv::set_json(&format!("job/{id}"), &job)?;
        kv::set(&queue_key(&job), b"")?;
        kv::set(&state_key(State::Queued, &id), b"")
    };
    write().map_err(|e| EnqueueError::Store(e.to_string()))?;
    Ok(job)
}

/// The next `n` jobs to run: highest priority first, then oldest.
pub fn next(n: u32) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    for key in kv::list_keys("queue/", n).map_err(store)? {
        let id = key.rsplit('/').next().unwrap_or_default();
        match get(id)? {
            Some(job) => jobs.push(job),
            // A queue entry without its job: drop it.
            None => kv::delete(&key).map_err(store)?,
        }
    }
    Ok(jobs)
}

/// The job `id`, if it exists.
pub fn get(id: &str) -> Result<Option<Job>, String> {
    if id.is_empty() || id.contains('/') {
        return Ok(None);
    }
    kv::get_json(&format!("job/{id}")).map_err(store)
}

/// The input of job `id`.
pub fn input(id: &str) -> Result<Vec<u8>, String> {
    Ok(kv::get(&format!("input/{id}"))
        .map_err(store)?
        .unwrap_or_default())
}

/// The output of finished job `id`.
pub fn output(id: &str) -> Result<Option<Vec<u8>>, String> {
    kv::get(&format!("output/{id}")).map_err(store)
}

/// Records what running `job` gave and takes it off the queue.
pub fn finish(
    mut job: Job,
    state: State,
    outcome: Outcome,
    output: Option<&[u8]>,
) -> Result<Job, String> {
    let write = || -> Result<(), kv::KvError> {
        kv::delete(&queue_key(&job))?;
        kv::delete(&state_key(job.state, &job.id))?;
        if let Some(out) = output {
            kv::set(&format!("output/{}", job.id), out)?;
        }
        job.state = state;
        job.result = Some(outcome);
        kv::set_json(&format!("job/{}", job.id), &job)?;
        kv::set(&state_key(state, &job.id), b"")
    };
    write().map_err(store)?;
    Ok(job)
}

/// Ids of jobs in `state`, oldest first, at most `limit`.
pub fn ids(state: State, limit: u32) -> Result<Vec<String>, String> {
    let prefix = format!("state/{}/", state.as_str());
    Ok(kv::list_keys(&prefix, limit)
        .map_err(store)?
        .into_iter()
        .map(|k| k[prefix.len()..].to_string())
        .collect())
}

fn queue_key(job: &Job) -> String {
    format!("queue/{:03}/{}", 255 - job.priority, job.id)
}

fn state_key(state: State, id: &str) -> String {
    format!("state/{}/{id}", state.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use depin_plugin_sdk::testing::TestHost;

    fn submission(priority: u8, input: &str) -> Submission {
        Submission {
            module: format!("sha256:{}", "a".repeat(64)),
            input: input.as_bytes().to_vec(),
            fuel: 1000,
            memory_mb: 16,
            priority,
            submitter: "alice".into(),
        }
    }

    #[test]
    fn highest_priority_runs_first_then_oldest() {
        let _host = TestHost::install(&[]);
        let low = enqueue(submission(1, "a"), 10).unwrap();
        let high = enqueue(submission(9, "b"), 10).unwrap();
        let low2 = enqueue(submission(1, "c"), 10).unwrap();
        let order: Vec<String> = next(10).unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(order, vec![high.id, low.id, low2.id]);
    }

    #[test]
    fn a_full_queue_refuses_and_finishing_makes_room() {
        let _host = TestHost::install(&[]);
        let first = enqueue(submission(5, "a"), 2).unwrap();
        enqueue(submission(5, "b"), 2).unwrap();
        assert_eq!(enqueue(submission(5, "c"), 2), Err(EnqueueError::Full(2)));
        let outcome = Outcome {
            fuel_used: 7,
            exit_code: Some(0),
            output_sha256: None,
            output_bytes: Some(2),
            error: None,
        };
        let done = finish(first.clone(), State::Done, outcome, Some(b"ok")).unwrap();
        assert_eq!(done.state, State::Done);
        assert!(enqueue(submission(5, "c"), 2).is_ok());
        assert_eq!(ids(State::Done, 10).unwrap(), vec![first.id.clone()]);
        assert_eq!(ids(State::Queued, 10).unwrap().len(), 2);
        assert_eq!(output(&first.id).unwrap().as_deref(), Some(&b"ok"[..]));
        assert_eq!(
            get(&first.id).unwrap().unwrap().result.unwrap().fuel_used,
            7
        );
    }

    #[test]
    fn ids_with_slashes_are_not_found() {
        let _host = TestHost::install(&[]);
        assert_eq!(get("../seq").unwrap(), None);
    }
}
