//! Containers for the image test (`tests/tests/images.rs`, run by `deploy/images test`): a podman
//! network of its own and the containers on it, removed when dropped. Everything goes through the
//! `podman` command, as an operator would type it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The tag `deploy/images` gave the images (`MEDEMBED_IMAGE_TAG`, default `dev`).
pub fn image_tag() -> String {
    std::env::var("MEDEMBED_IMAGE_TAG").unwrap_or_else(|_| "dev".into())
}

/// `localhost/NAME:TAG` for one of the images `deploy/images` builds (`medembed-torch` gets the
/// CPU variant's `cpu-TAG`).
pub fn image(name: &str) -> String {
    let tag = image_tag();
    if name == "medembed-torch" {
        format!("localhost/{name}:cpu-{tag}")
    } else {
        format!("localhost/{name}:{tag}")
    }
}

/// Runs `podman ARGS`; its output, whatever the exit status.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman is installed (deploy/images install)")
}

/// Runs `podman ARGS` and returns its stdout, panicking with stderr if it fails.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One container to start: image, name, and what `podman run` gets.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub image: String,
    pub env: Vec<(String, String)>,
    /// `HOST:CONTAINER:ro` bind mounts.
    pub mounts: Vec<String>,
    /// Paths mounted as tmpfs (the only writable places of a read-only container).
    pub tmpfs: Vec<String>,
    /// Production settings: read-only root filesystem, the image's own non-root user.
    pub read_only: bool,
    /// The command (after the image's entrypoint).
    pub command: Vec<String>,
}

/// A podman network (internal: no route out) and the containers started on it. Dropping it
/// removes them all and the network.
#[derive(Debug)]
pub struct Containers {
    pub network: String,
    names: Vec<String>,
}

impl Containers {
    /// A new internal network named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let network = format!("{name}-{}", std::process::id());
        podman_ok(&["network", "create", "--internal", &network]);
        Self {
            network,
            names: Vec::new(),
        }
    }

    /// The container's full name (`NETWORK-NAME`); `name` alone resolves on the network.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}-{name}", self.network)
    }

    /// Starts `spec` as `name` (also its host name on the network), detached.
    pub fn run(&mut self, name: &str, spec: &Spec) {
        let full = self.full_name(name);
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            &full,
            "--network",
            &self.network,
            "--network-alias",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if spec.read_only {
            args.push("--read-only".into());
        }
        for path in &spec.tmpfs {
            args.extend(["--tmpfs".into(), path.clone()]);
        }
        for mount in &spec.mounts {
            args.extend(["--volume".into(), mount.clone()]);
        }
        for (k, v) in &spec.env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        args.push(spec.image.clone());
        args.extend(spec.command.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        self.names.push(full);
    }

    /// The container's address on the network (the host reaches it over the bridge).
    pub fn ip(&self, name: &str) -> String {
        podman_ok(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.full_name(name),
        ])
    }

    /// `podman inspect --format FORMAT` of the container.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.full_name(name)])
    }

    /// Runs `podman healthcheck run` (health checks do not run on their own without systemd)
    /// until it passes; false after `timeout`.
    pub fn wait_healthy(&self, name: &str, timeout: Duration) -> bool {
        let full = self.full_name(name);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if podman(&["healthcheck", "run", &full]).status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    /// `podman exec` in the container; its stdout (panics if the command fails).
    pub fn exec(&self, name: &str, command: &[&str]) -> String {
        let full = self.full_name(name);
        let mut args = vec!["exec", full.as_str()];
        args.extend_from_slice(command);
        podman_ok(&args)
    }

    /// `podman stop --time SECS` (SIGTERM, then SIGKILL after the grace period); the exit code.
    pub fn stop(&self, name: &str, grace: Duration) -> i64 {
        let full = self.full_name(name);
        podman_ok(&["stop", "--time", &grace.as_secs().to_string(), &full]);
        self.inspect(name, "{{.State.ExitCode}}")
            .parse()
            .expect("an exit code")
    }

    /// Everything the container wrote to stdout and stderr, over all its runs.
    pub fn logs(&self, name: &str) -> String {
        let out = podman(&["logs", &self.full_name(name)]);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }

    /// The JSON log records of the container (other lines skipped).
    pub fn log_records(&self, name: &str) -> Vec<serde_json::Value> {
        self.logs(name)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last lines of every container's log, for a failing assertion's message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for full in &self.names {
            let name = full
                .strip_prefix(&format!("{}-", self.network))
                .unwrap_or(full);
            let text = self.logs(name);
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} ---\n"));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
        let _ = podman(&["network", "rm", "--force", &self.network]);
    }
}
