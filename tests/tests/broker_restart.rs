//! The broker restarts in the middle of a run; the worker reconnects by itself and every task
//! completes. Alone in its test binary because it stops RabbitMQ for everyone on the machine
//! (cargo runs test binaries one after another).

use std::time::Duration;

use medembed_e2e::{
    EchoRun, EchoTask, ServicesGuard, eventually, output_key, rabbitmqctl, signal, spawn_worker,
    wait_exit,
};
use medembed_pipeline::messages::TaskMessage;
const TEST_STAGE: &str = env!("CARGO_BIN_EXE_medembed-test-stage");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_a_broker_restart() {
    const TASKS: u32 = 100;
    let run = EchoRun::new("restart", &[("MEDEMBED__QUEUE__PREFETCH", "2")]).await;
    run.publish(0..TASKS, 100).await;
    let (queue, store) = (&run.queue, &run.store);
    let log = run.log();
    let mut worker = spawn_worker(TEST_STAGE, &run.env, &log);
    let count = || async { store.list("out/").await.map(|v| v.len()).unwrap_or(0) };
    assert!(eventually(Duration::from_secs(60), || async { count().await >= 20 }).await);

    let guard = ServicesGuard;
    rabbitmqctl("stop_app");
    let stopped_at = count().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    rabbitmqctl("start_app");
    rabbitmqctl("await_startup");
    drop(guard);

    let all = eventually(Duration::from_secs(120), || async {
        count().await >= TASKS as usize
    })
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        all,
        "only {} of {TASKS} after the restart; log:\n{log_text}",
        count().await
    );
    assert!(
        stopped_at < TASKS as usize,
        "the restart must happen mid-run"
    );
    for part in 0..TASKS {
        assert!(
            store.exists(&output_key(part)).await.expect("exists"),
            "part {part}"
        );
    }
    // Once at start, at least once more after the restart.
    let connects = log_text.matches("connected to the broker").count();
    assert!(
        connects >= 2,
        "the worker never reconnected ({connects} connects); log:\n{log_text}"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            queue.depth(EchoTask::QUEUE).await.is_ok_and(|d| d == 0)
        })
        .await,
        "tasks left in the queue"
    );
    signal(&worker, "TERM");
    assert!(
        wait_exit(&mut worker, Duration::from_secs(15))
            .expect("exits")
            .success()
    );
    queue.close().await;
}
