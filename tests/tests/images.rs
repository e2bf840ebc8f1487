//! The images, built and run for real (`deploy/images test` builds them from release binaries,
//! then runs this file; it is not part of `.ci/run`, see deploy/README.md "Images").
//!
//! The whole system in containers on an internal podman network (no route out): RabbitMQ and
//! Garage from the test images, the three worker images, and the libtorch image as trainer,
//! indexer and api. Every medembed container runs as in production: read-only root filesystem,
//! the image's non-root user, only /tmp writable, secrets from the environment. A job over the
//! sample corpus goes in through `POST /api/jobs`, the trainer's container is stopped
//! (`podman stop`, SIGTERM) mid-training and a new one finishes the task, and the job is searched
//! through the api. The test reaches the containers over the network's bridge, as an operator on
//! the host would.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use medembed_e2e::api::TestKeys;
use medembed_e2e::containers::{Containers, Spec, image, podman, podman_ok};
use medembed_e2e::deployment::{API, Completions, WORKERS, sample_corpus};
use medembed_e2e::eventually;
use medembed_pipeline::config::Settings;
use medembed_pipeline::keys;
use medembed_pipeline::messages::{JobId, QUEUES};
use medembed_pipeline::queue;
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store;

/// The worker images, one per binary.
const WORKER_IMAGES: [&str; 3] = [
    "medembed-fetcher",
    "medembed-cleaner",
    "medembed-pair-builder",
];
/// The programs of the libtorch image.
const TORCH_PROGRAMS: [&str; 4] = [
    "medembed-trainer",
    "medembed-indexer",
    "medembed-api",
    "medembed",
];

/// The pipeline test's settings (tests/tests/pipeline.rs): loose pair thresholds for the sample,
/// small parts, short training with frequent checkpoints. More steps than there (60), so that the
/// trainer is still training when it is stopped after its first checkpoint.
const SETTINGS: &[(&str, &str)] = &[
    ("MEDEMBED__PAIRS__MESH_THRESHOLD", "0.02"),
    ("MEDEMBED__PAIRS__KEYWORD_THRESHOLD", "0.01"),
    ("MEDEMBED__TRAIN__BASE_MODEL", MODEL_IN_CONTAINER),
    ("MEDEMBED__TRAIN__DEVICE", "cpu"),
    ("MEDEMBED__TRAIN__MAX_SEQ_LENGTH", "64"),
    ("MEDEMBED__TRAIN__BATCH_SIZE", "2"),
    ("MEDEMBED__TRAIN__EPOCHS", "20"),
    ("MEDEMBED__TRAIN__MAX_STEPS", "60"),
    ("MEDEMBED__TRAIN__CHECKPOINT_EVERY_STEPS", "2"),
    ("MEDEMBED__TRAIN__LEASE_SECS", "10"),
    ("MEDEMBED__INDEX__MAX_SEQ_LENGTH", "128"),
    ("MEDEMBED__INDEX__DEVICE", "cpu"),
    ("MEDEMBED__FETCH__ARTICLES_PER_PART", "6"),
    ("MEDEMBED__QUEUE__RETRY_BASE_DELAY_MS", "1000"),
    ("MEDEMBED__QUEUE__RETRY_MAX_DELAY_MS", "8000"),
    ("MEDEMBED__LOG__FORMAT", "json"),
];
/// Where the offline MiniLM is mounted (read-only) in the libtorch containers.
const MODEL_IN_CONTAINER: &str = "/models/all-MiniLM-L6-v2";
/// Where the sample corpus is mounted in the fetcher and the api.
const SAMPLES_IN_CONTAINER: &str = "/samples";
const BUCKET: &str = "medembed";

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secrets of one run, made up now: none of them is in an image.
struct Secrets {
    amqp_password: String,
    s3_key_id: String,
    s3_secret: String,
    keys: TestKeys,
}

impl Secrets {
    fn new() -> Self {
        Self {
            amqp_password: random_hex(16),
            // Garage's key format: GK + 12 bytes, secret 32 bytes, hex.
            s3_key_id: format!("GK{}", random_hex(12)),
            s3_secret: random_hex(32),
            keys: TestKeys::new(),
        }
    }
}

/// The environment of every medembed container: the image's distributed config, the broker and
/// the S3 server by their names on the network, the secrets, the test settings.
fn medembed_env(s: &Secrets) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("MEDEMBED_CONFIG", "/etc/medembed/distributed.toml"),
        (
            "MEDEMBED__QUEUE__AMQP_URL",
            "amqp://medembed@rabbitmq:5672/%2f",
        ),
        ("MEDEMBED__QUEUE__AMQP_PASSWORD", &s.amqp_password),
        ("MEDEMBED__STORE__ENDPOINT", "http://garage:3900"),
        ("MEDEMBED__STORE__BUCKET", BUCKET),
        ("MEDEMBED__STORE__REGION", "garage"),
        ("MEDEMBED__STORE__ACCESS_KEY_ID", &s.s3_key_id),
        ("MEDEMBED__STORE__SECRET_ACCESS_KEY", &s.s3_secret),
        ("RUST_LOG", "info,lapin=warn,aws=warn,hyper=warn"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The test's own settings: the same broker and bucket, reached at the containers' addresses.
fn host_settings(s: &Secrets, c: &Containers) -> Settings {
    let env: Vec<(String, String)> = [
        ("MEDEMBED__QUEUE__BACKEND", "amqp".to_string()),
        (
            "MEDEMBED__QUEUE__AMQP_URL",
            format!(
                "amqp://medembed:{}@{}:5672/%2f",
                s.amqp_password,
                c.ip("rabbitmq")
            ),
        ),
        ("MEDEMBED__STORE__BACKEND", "s3".to_string()),
        (
            "MEDEMBED__STORE__ENDPOINT",
            format!("http://{}:3900", c.ip("garage")),
        ),
        ("MEDEMBED__STORE__BUCKET", BUCKET.to_string()),
        ("MEDEMBED__STORE__REGION", "garage".to_string()),
        ("MEDEMBED__STORE__PATH_STYLE", "true".to_string()),
        ("MEDEMBED__STORE__ACCESS_KEY_ID", s.s3_key_id.clone()),
        ("MEDEMBED__STORE__SECRET_ACCESS_KEY", s.s3_secret.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Settings::load_with_env(None, env).expect("settings")
}

/// The container spec of medembed program `bin`, as in production.
fn medembed_spec(bin: &str, s: &Secrets) -> Spec {
    let samples = sample_corpus()
        .canonicalize()
        .expect("samples/corpus exists");
    let model = Path::new(env!("MEDEMBED_TEST_MODEL_DIR"))
        .canonicalize()
        .expect("the offline model (deploy/dev/deps)");
    let mut spec = Spec {
        image: image(if WORKER_IMAGES.contains(&bin) {
            bin
        } else {
            "medembed-torch"
        }),
        env: medembed_env(s),
        read_only: true,
        tmpfs: vec!["/tmp".into()],
        ..Spec::default()
    };
    // The fetcher reads the sample corpus; the api checks `files:` sources against it.
    if bin == "medembed-fetcher" || bin == API {
        spec.mounts.push(format!(
            "{}:{SAMPLES_IN_CONTAINER}/corpus:ro",
            samples.display()
        ));
    }
    match bin {
        "medembed-trainer" | "medembed-indexer" | API => {
            spec.command = vec![bin.to_string()];
            // The model cache volume of compose and k8s.
            spec.tmpfs.push("/var/cache/medembed".into());
            spec.mounts
                .push(format!("{}:{MODEL_IN_CONTAINER}:ro", model.display()));
        }
        _ => {}
    }
    if bin == API {
        spec.env.extend(
            [
                ("MEDEMBED__API__LISTEN_ADDR", "0.0.0.0:8080"),
                ("MEDEMBED__SERVER__LISTEN_ADDR", "0.0.0.0:9464"),
                ("MEDEMBED__API__KEYS", &s.keys.entries),
                ("MEDEMBED__API__ALLOWED_SOURCES", SAMPLES_IN_CONTAINER),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    spec
}

/// Starts the broker and the S3 server and waits for both; adds the broker user `medembed`
/// (and deletes `guest`).
fn start_services(c: &mut Containers, s: &Secrets) {
    c.run(
        "rabbitmq",
        &Spec {
            image: image("medembed-test-rabbitmq"),
            ..Spec::default()
        },
    );
    c.run(
        "garage",
        &Spec {
            image: image("medembed-test-garage"),
            env: vec![
                ("GARAGE_KEY_ID".into(), s.s3_key_id.clone()),
                ("GARAGE_KEY_SECRET".into(), s.s3_secret.clone()),
                ("GARAGE_BUCKET".into(), BUCKET.into()),
            ],
            ..Spec::default()
        },
    );
    assert!(
        c.wait_healthy("rabbitmq", Duration::from_secs(120)),
        "RabbitMQ not healthy:\n{}",
        c.log_tails()
    );
    assert!(
        c.wait_healthy("garage", Duration::from_secs(60)),
        "Garage not healthy:\n{}",
        c.log_tails()
    );
    c.exec(
        "rabbitmq",
        &[
            "rabbitmqctl",
            "-q",
            "add_user",
            "medembed",
            &s.amqp_password,
        ],
    );
    c.exec(
        "rabbitmq",
        &[
            "rabbitmqctl",
            "-q",
            "set_permissions",
            "-p",
            "/",
            "medembed",
            ".*",
            ".*",
            ".*",
        ],
    );
    c.exec("rabbitmq", &["rabbitmqctl", "-q", "delete_user", "guest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_submit_to_search_in_read_only_non_root_containers_loses_nothing_to_a_stopped_worker()
 {
    let secrets = Secrets::new();
    let mut c = Containers::new("medembed-images");
    start_services(&mut c, &secrets);
    let settings = host_settings(&secrets, &c);
    let queue = queue::open(&settings.queue).await.expect("the broker");
    for name in QUEUES {
        queue.declare(name).await.expect("declare");
    }
    let store = store::open(&settings.store).await.expect("the S3 server");

    for bin in WORKERS.iter().chain([&API]) {
        c.run(bin, &medembed_spec(bin, &secrets));
    }
    // As in production: read-only root, the image's non-root user, and healthy.
    for bin in WORKERS.iter().chain([&API]) {
        assert_eq!(
            c.inspect(bin, "{{.HostConfig.ReadonlyRootfs}}"),
            "true",
            "{bin}"
        );
        assert_eq!(
            c.exec(bin, &["id", "-u"]),
            "10001",
            "{bin} runs as uid 10001"
        );
        // Even root cannot write outside the tmpfs mounts.
        let write = podman(&["exec", "--user", "0", &c.full_name(bin), "touch", "/x"]);
        assert!(
            String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
            "{bin}: the root filesystem is writable: {write:?}"
        );
        c.exec(bin, &["touch", "/tmp/x"]);
        assert!(
            c.wait_healthy(bin, Duration::from_secs(60)),
            "{bin}: its HEALTHCHECK does not pass:\n{}",
            c.log_tails()
        );
    }
    println!(
        "containers: rabbitmq, garage, {} workers and the api up and healthy, read-only, uid 10001",
        WORKERS.len()
    );

    // Submit through the api, with the submit key.
    let api = format!("http://{}:8080", c.ip(API));
    let client = reqwest::Client::new();
    let request = serde_json::json!({
        "query": "sample corpus",
        "source": format!("files:{SAMPLES_IN_CONTAINER}/corpus"),
        "max_articles": 1000,
    });
    let started = Instant::now();
    let response = client
        .post(format!("{api}/api/jobs"))
        .bearer_auth(&secrets.keys.submit)
        .json(&request)
        .send()
        .await
        .expect("POST /api/jobs");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("json");
    assert!(status.is_success(), "POST /api/jobs: {status} {body}");
    let job: JobId = body["id"].as_str().expect("id").parse().expect("a job id");

    // Stop the trainer's container mid-training (after its first checkpoint): it drains (the
    // task goes back to the queue with its checkpoint) and exits 0; a new container resumes it.
    let checkpoint = keys::train_file(job, "checkpoints/latest.json");
    let checkpointed = eventually(Duration::from_secs(900), || async {
        store.exists(&checkpoint).await.unwrap_or(false)
    })
    .await;
    assert!(checkpointed, "no training checkpoint:\n{}", c.log_tails());
    let exit = c.stop("medembed-trainer", Duration::from_secs(180));
    let stopped_log = c.logs("medembed-trainer");
    assert_eq!(exit, 0, "the trainer exits 0 after SIGTERM:\n{stopped_log}");
    assert!(
        stopped_log.contains("draining tasks in flight"),
        "{stopped_log}"
    );
    assert!(
        !c.log_records("medembed-trainer")
            .iter()
            .any(|r| r["message"] == "task done" && r["span"]["stage"] == "train"),
        "the stopped trainer finished training before it was stopped: stop it earlier"
    );
    c.run(
        "medembed-trainer-2",
        &medembed_spec("medembed-trainer", &secrets),
    );

    let done = eventually(Duration::from_secs(1200), || async {
        StageStatus::load(store.as_ref(), job, "index")
            .await
            .is_ok_and(|s| s.state == StageState::Done)
    })
    .await;
    assert!(done, "job {job} not done within 20 min:\n{}", c.log_tails());
    let job_s = started.elapsed().as_secs_f64();

    // Search it through the api with the read key: a title finds its article.
    let title = "A Novel Coronavirus from Patients with Pneumonia in China, 2019.";
    let hits: serde_json::Value = client
        .post(format!("{api}/api/search"))
        .bearer_auth(&secrets.keys.read)
        .json(&serde_json::json!({ "query": title, "k": 3, "job": job.to_string() }))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(hits["hits"][0]["title"], title, "{hits}");
    // Without a key, nothing.
    let anonymous = client
        .post(format!("{api}/api/search"))
        .json(&serde_json::json!({ "query": title, "job": job.to_string() }))
        .send()
        .await
        .expect("search");
    assert_eq!(anonymous.status(), 401);

    // Every work unit done, none twice.
    let prefix = keys::job_prefix(job);
    let raw_parts = store
        .list(&prefix)
        .await
        .expect("list")
        .iter()
        .filter_map(|m| m.key.strip_prefix(&prefix))
        .filter(|k| k.starts_with("raw/") && k.ends_with(".parquet"))
        .count();
    assert!(raw_parts >= 5, "the sample fans out into parts");
    let mut names: Vec<&str> = WORKERS.to_vec();
    names.push("medembed-trainer-2");
    let done = Completions::from_records(names.iter().flat_map(|n| c.log_records(n)));
    let lost = done.lost(raw_parts);
    let duplicated = done.duplicated();
    let completed = done.total();
    println!(
        "images e2e: job_s={job_s:.1} raw_parts={raw_parts} tasks_completed={completed} lost={} duplicated={duplicated} trainer_stopped_exit={exit}",
        lost.len()
    );
    assert!(lost.is_empty(), "never completed: {lost:?}");
    assert_eq!(duplicated, 0, "{done:?}");
    // Trained once, by the restarted container (the stopped one finished nothing). Delivery is
    // at least once: a second copy of the train task may come (seen with the machine loaded),
    // and the trainer then only sees the published model and acks it.
    let skipped = names
        .iter()
        .flat_map(|n| c.log_records(n))
        .filter(|r| r["message"] == "model already published; not training again")
        .count();
    assert_eq!(
        done.of("train") as i64 - skipped as i64,
        1,
        "trained once, by the restarted trainer: {done:?}"
    );
    queue.close().await;
}

/// Every program answers `--help`; no image carries a secret (in its environment, labels or
/// files) or the sources.
#[test]
fn every_image_answers_help_and_carries_no_secret() {
    let mut programs: Vec<(String, Vec<&str>)> = WORKER_IMAGES
        .iter()
        .map(|name| (image(name), vec!["--help"]))
        .collect();
    for program in TORCH_PROGRAMS {
        programs.push((image("medembed-torch"), vec![program, "--help"]));
    }
    for (img, args) in &programs {
        let mut run = vec![
            "run",
            "--rm",
            "--read-only",
            "--network",
            "none",
            img.as_str(),
        ];
        run.extend(args);
        let help = podman_ok(&run);
        assert!(
            help.contains("Usage:") && help.contains("--help"),
            "{img} {args:?}:\n{help}"
        );
    }

    let mut images: Vec<String> = WORKER_IMAGES.iter().map(|n| image(n)).collect();
    images.push(image("medembed-torch"));
    images.push(image("medembed-torch").replace(":cpu-", ":cuda-"));
    images.push(image("medembed-test-rabbitmq"));
    images.push(image("medembed-test-garage"));
    for img in &images {
        let config = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", img]);
        let config: serde_json::Value = serde_json::from_str(&config).expect("json");
        for entry in config["Env"].as_array().into_iter().flatten() {
            let entry = entry.as_str().unwrap_or_default();
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            assert!(
                !names_a_secret(name) || value.is_empty(),
                "{img}: a secret in the environment: {name}"
            );
        }
        // Files: private keys, AWS and Garage access keys, dotenv files, the sources or .git.
        let found = podman_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0",
            "--entrypoint",
            "sh",
            img,
            "-c",
            "find / -xdev \\( -name .env -o -name .git -o -name Cargo.toml -o -name '*.pem' -path '*private*' \\) -print; \
             grep -rIlE 'BEGIN ([A-Z]+ )?PRIVATE KEY|AKIA[0-9A-Z]{16}|GK[0-9a-f]{24}' /etc /usr/local /opt /home /root /var/lib 2>/dev/null; true",
        ]);
        assert!(found.is_empty(), "{img} carries:\n{found}");
    }
    let sizes = podman_ok(&[
        "images",
        "--filter",
        "reference=localhost/medembed-*",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.Size}}",
    ]);
    println!("images: {} checked; sizes:\n{sizes}", images.len());
}

/// Whether an environment variable's name says it holds a secret.
fn names_a_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "API_KEY", "_KEYS", "PRIVATE"]
        .iter()
        .any(|word| upper.contains(word))
}

/// The CUDA variant cannot run without a GPU; inside it, every program and libtorch_cuda.so find
/// every library they need except the driver's libcuda, which the NVIDIA container runtime
/// mounts. libtorch.so (the wheel's) names libtorch_cuda.so, so the programs load CUDA.
#[test]
fn the_cuda_image_resolves_every_library_but_the_driver() {
    let img = image("medembed-torch").replace(":cpu-", ":cuda-");
    let mut files: Vec<String> = TORCH_PROGRAMS
        .iter()
        .map(|p| format!("/usr/local/bin/{p}"))
        .collect();
    files.push("/opt/torch/lib/libtorch_cuda.so".into());
    for file in &files {
        let ldd = podman_ok(&["run", "--rm", "--network", "none", &img, "ldd", file]);
        let missing: Vec<&str> = ldd
            .lines()
            .filter(|l| l.contains("not found") && !l.contains("libcuda.so"))
            .collect();
        assert!(missing.is_empty(), "{img} {file}: {missing:?}\n{ldd}");
        if file.contains("/bin/") {
            assert!(
                ldd.contains("/opt/torch/lib/libtorch_cuda.so"),
                "{file} does not load libtorch_cuda.so:\n{ldd}"
            );
        }
    }
    println!(
        "{img}: {} files resolve every library but the driver's libcuda",
        files.len()
    );
}
