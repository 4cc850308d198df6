//! The progress bar on stderr while a workload runs: clients bump a shared counter, a ticker task
//! redraws the bar ten times a second. indicatif draws nothing when stderr is not a terminal,
//! so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REDRAW: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Progress {
    pub done: Arc<AtomicU64>,
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// A bar counting to `total` if known, else a spinner with the count; `label` prefixes it.
    pub fn start(label: &str, total: Option<u64>) -> Progress {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
                )
                .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {spinner} {pos} ({per_sec})",
                )
                .expect("valid template"),
            ),
        };
        bar.set_prefix(label.to_owned());
        let done = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (bar, done) = (bar.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(REDRAW).await;
                }
            })
        };
        Progress { done, bar, ticker }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.set_position(self.done.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}
