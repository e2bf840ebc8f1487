//! A worker as a separate OS process over the real RabbitMQ and Garage: crash safety under
//! SIGKILL, graceful SIGTERM, and its /metrics checked by promtool.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use medembed_e2e::{
    EchoRun, EchoTask, eventually, free_port, http_get, output_key, signal, spawn_worker, wait_exit,
};
use medembed_pipeline::messages::TaskMessage;
const TEST_STAGE: &str = env!("CARGO_BIN_EXE_medembed-test-stage");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_two_sigkills_lose_and_duplicate_nothing() {
    const TASKS: u32 = 200;
    let s = EchoRun::new("crash", &[("MEDEMBED__QUEUE__PREFETCH", "4")]).await;
    s.publish(0..TASKS, 30).await;

    let mut worker = spawn_worker(TEST_STAGE, &s.env, &s.log());
    for kill_after in [40, 110] {
        let reached = eventually(Duration::from_secs(60), || async {
            s.outputs().await.len() >= kill_after
        })
        .await;
        assert!(reached, "worker made no progress; log:\n{}", s.log_text());
        signal(&worker, "KILL");
        let at_kill = s.outputs().await.len();
        assert!(
            at_kill < TASKS as usize,
            "the kill must land mid-run ({at_kill} done)"
        );
        wait_exit(&mut worker, Duration::from_secs(10)).expect("killed");
        worker = spawn_worker(TEST_STAGE, &s.env, &s.log());
    }
    let done = eventually(Duration::from_secs(120), || async {
        s.outputs().await.len() >= TASKS as usize
            && s.queue.depth(EchoTask::QUEUE).await.is_ok_and(|d| d == 0)
    })
    .await;
    signal(&worker, "TERM");
    let status = wait_exit(&mut worker, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");

    let outputs = s.outputs().await;
    let expected: BTreeSet<String> = (0..TASKS).map(output_key).collect();
    let found: BTreeSet<String> = outputs.iter().cloned().collect();
    let completed = expected.intersection(&found).count();
    let lost = expected.difference(&found).count();
    let duplicated_outputs = outputs.len() - completed;
    println!(
        "tasks={TASKS} completed={completed} lost={lost} duplicated_outputs={duplicated_outputs}"
    );
    assert!(done, "not all tasks completed; log:\n{}", s.log_text());
    assert_eq!(lost, 0);
    assert_eq!(duplicated_outputs, 0);
    assert!(
        s.queue
            .take_dead_letters(EchoTask::QUEUE, 10)
            .await
            .expect("dead")
            .is_empty()
    );
    s.queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_task_in_flight_and_exits_zero() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = EchoRun::new(
        "sigterm",
        &[
            ("MEDEMBED__SERVER__LISTEN_ADDR", &addr),
            ("MEDEMBED__RUNNER__DRAIN_TIMEOUT_SECS", "10"),
        ],
    )
    .await;
    s.publish(0..1, 3000).await;
    let mut worker = spawn_worker(TEST_STAGE, &s.env, &s.log());
    let in_flight = eventually(Duration::from_secs(30), || async {
        http_get(port, "/metrics")
            .is_ok_and(|(_, body)| body.contains("medembed_tasks_in_flight{stage=\"echo\"} 1"))
    })
    .await;
    assert!(in_flight, "task never started; log:\n{}", s.log_text());
    let asked = Instant::now();
    signal(&worker, "TERM");
    let status =
        wait_exit(&mut worker, Duration::from_secs(10)).expect("exits within the drain timeout");
    let took = asked.elapsed();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        s.log_text()
    );
    assert!(
        s.store.exists(&output_key(0)).await.expect("exists"),
        "the task in flight finished"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Acked: it is not waiting to be redelivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.queue.depth(EchoTask::QUEUE).await.expect("depth"), 0);
    assert!(
        s.log_text().contains("draining tasks in flight"),
        "{}",
        s.log_text()
    );
    s.queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_running_worker_pass_promtool() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = EchoRun::new("metrics", &[("MEDEMBED__SERVER__LISTEN_ADDR", &addr)]).await;
    let mut worker = spawn_worker(TEST_STAGE, &s.env, &s.log());
    s.publish(0..3, 10).await;
    let done = eventually(Duration::from_secs(30), || async {
        s.outputs().await.len() == 3
    })
    .await;
    assert!(done, "log:\n{}", s.log_text());
    let ok = eventually(Duration::from_secs(10), || async {
        http_get(port, "/metrics")
            .is_ok_and(|(_, b)| b.contains("medembed_tasks_total{outcome=\"ok\",stage=\"echo\"} 3"))
    })
    .await;
    let (status, metrics) = http_get(port, "/metrics").expect("GET /metrics");
    assert!(ok && status == 200, "{metrics}");
    for name in [
        "medembed_tasks_total",
        "medembed_task_duration_seconds_bucket",
        "medembed_tasks_in_flight",
        "medembed_store_bytes_written_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by the test command (Debian package prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_get(port, "/healthz").expect("healthz").0, 200);
    let (ready, body) = http_get(port, "/readyz").expect("readyz");
    assert_eq!(ready, 200, "{body}");
    signal(&worker, "TERM");
    assert!(
        wait_exit(&mut worker, Duration::from_secs(15))
            .expect("exits")
            .success()
    );
    s.queue.close().await;
}
