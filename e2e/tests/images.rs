//! The images `make images` builds (images/out, which `make test` builds first): each archive is
//! an OCI layout that names its image `localhost/kosmos/<name>:<crate version>`, runs as 65532,
//! and its programs really run from the image's own files (in a chroot, as that user): the
//! operator and webhook are static, the executor has sh, kubectl, helm, kustomize and a curl
//! whose libraries are all there.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn images_dir() -> PathBuf {
    std::env::var_os("IMAGES_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| kosmos_e2e::repo_dir().join("images/out"))
}

/// The unpacked archive: its layout and the config and rootfs of its one image.
struct Image {
    _dir: tempfile::TempDir,
    reference: String,
    config: Value,
    rootfs: PathBuf,
}

fn tar(args: &[&str], file: &Path, into: &Path) -> Result<()> {
    let status = Command::new("tar")
        .args(args)
        .arg(file)
        .arg("-C")
        .arg(into)
        .status()?;
    ensure!(status.success(), "tar {args:?} {} failed", file.display());
    Ok(())
}

fn open(name: &str) -> Result<Image> {
    let archive = images_dir().join(format!("{name}.oci.tar"));
    ensure!(
        archive.is_file(),
        "{} is missing: run `make images` first (`make test` does)",
        archive.display()
    );
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout)?;
    tar(&["-xf"], &archive, &layout)?;
    let read = |digest: &str| -> Result<Value> {
        let path = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?,
        )?)
    };
    let layout_file: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout"))?)?;
    ensure!(
        layout_file["imageLayoutVersion"] == "1.0.0",
        "{layout_file}"
    );
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let descriptor = &index["manifests"][0];
    let reference = descriptor["annotations"]["io.containerd.image.name"]
        .as_str()
        .context("index.json names no image")?
        .to_owned();
    let manifest = read(
        descriptor["digest"]
            .as_str()
            .context("no manifest digest")?,
    )?;
    ensure!(
        manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let config = read(manifest["config"]["digest"].as_str().context("no config")?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(
        layers.len() == 1,
        "one layer on nothing, not {}",
        layers.len()
    );
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let layer = layout.join("blobs/sha256").join(
        layers[0]["digest"]
            .as_str()
            .context("no layer digest")?
            .trim_start_matches("sha256:"),
    );
    tar(&["-xzf"], &layer, &rootfs)?;
    Ok(Image {
        _dir: dir,
        reference,
        config,
        rootfs,
    })
}

/// Runs `command` inside the image's files as user 65532 and returns its stdout.
fn run_in(image: &Image, command: &[&str]) -> Result<String> {
    let output = Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&image.rootfs)
        .args(command)
        .env_clear()
        // /usr/sbin for chroot itself; the image has only the first three.
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/tmp")
        .output()
        .context("running chroot (the test runs as root, like CI)")?;
    ensure!(
        output.status.success(),
        "{command:?} in {} failed: {}{}",
        image.reference,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn common_checks(image: &Image, name: &str) -> Result<()> {
    ensure!(
        image.reference == format!("localhost/kosmos/{name}:{VERSION}"),
        "named {}",
        image.reference
    );
    ensure!(
        image.config["config"]["User"] == "65532:65532",
        "{name} runs as {}",
        image.config["config"]["User"]
    );
    ensure!(
        image.config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION,
        "{}",
        image.config
    );
    Ok(())
}

#[test]
fn the_operator_and_webhook_images_hold_one_static_binary_that_runs() -> Result<()> {
    for (name, binary) in [
        (
            "virtual-cluster-operator",
            "/usr/local/bin/virtual-cluster-operator",
        ),
        ("plugin-webhook", "/usr/local/bin/plugin-webhook"),
    ] {
        let image = open(name)?;
        common_checks(&image, name)?;
        ensure!(
            image.config["config"]["Entrypoint"][0] == binary,
            "{}",
            image.config
        );
        // Nothing else in the image but the users file: no shell, no libraries.
        ensure!(!image.rootfs.join("bin/sh").exists(), "{name} has a shell");
        ensure!(!image.rootfs.join("lib").exists(), "{name} has libraries");
        let help = run_in(&image, &[binary, "--help"])?;
        ensure!(help.contains("Usage"), "{name} --help: {help}");
    }
    Ok(())
}

#[test]
fn the_executor_image_has_the_tools_the_executor_script_uses() -> Result<()> {
    let image = open("plugin-executor")?;
    common_checks(&image, "plugin-executor")?;
    let versions = std::fs::read_to_string(kosmos_e2e::e2e_dir().join("versions.env"))?;
    let pinned = |key: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap()
            .to_owned()
    };
    let out = run_in(
        &image,
        &[
            "/bin/sh",
            "-c",
            "kubectl version --client && helm version --short && kustomize version \
             && curl --version && id -u && printf x | sha256sum && tar --help 2>&1 | head -1 \
             && echo written > /tmp/probe && cat /tmp/probe",
        ],
    )?;
    for expected in [
        pinned("KUBERNETES_VERSION"),
        pinned("HELM_VERSION"),
        pinned("KUSTOMIZE_VERSION"),
        "curl ".to_owned(),
        "65532".to_owned(),
        "written".to_owned(),
    ] {
        ensure!(out.contains(&expected), "no {expected} in:\n{out}");
    }
    // curl verifies certificates against the image's CA bundle.
    ensure!(
        image
            .rootfs
            .join("etc/ssl/certs/ca-certificates.crt")
            .is_file()
    );
    // busybox's wget would fetch https without verifying the certificate: it is left out.
    ensure!(
        !image.rootfs.join("bin/wget").exists(),
        "wget is in the image"
    );
    Ok(())
}
