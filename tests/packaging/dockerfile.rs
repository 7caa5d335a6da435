//! The Dockerfile, without a container engine: its build stage replayed (every file cargo needs is
//! in the context) and its compiler flags equal to `make image`'s.

use crate::harness::*;

#[test]
fn dockerfile_builds_a_static_binary_into_a_minimal_non_root_image() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms.last().unwrap().contains("scratch"),
        "the runtime stage is FROM scratch: {froms:?}"
    );
    for needle in [
        "--locked",
        "--release",
        "x86_64-unknown-linux-musl",
        "ca-certificates.crt",
        "USER 65532:65532",
        "ENTRYPOINT [\"/ingestion-key-operator\"]",
        "CMD [\"run\"]",
        "SOURCE_DATE_EPOCH",
    ] {
        assert!(text.contains(needle), "the Dockerfile lacks {needle:?}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target" || l.trim() == "/target"),
        ".dockerignore keeps target/ out"
    );
}

/// One instruction of a Dockerfile: the keyword (upper case) and its arguments, with line
/// continuations joined and comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// Whether `.dockerignore` (top-level names and `*.suffix` patterns, all it uses) excludes `rel`.
fn docker_ignored(ignore: &[String], rel: &Path) -> bool {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ignore.iter().any(|pattern| {
        let pattern = pattern.trim_start_matches('/');
        match pattern.strip_prefix('*') {
            Some(suffix) => name.ends_with(suffix),
            None => first.as_deref() == Some(pattern) || rel == Path::new(pattern),
        }
    })
}

/// `COPY src dest` from `context` into the build directory `dir` (the WORKDIR), as Docker does:
/// a directory's contents go into the destination; `.dockerignore` applies.
fn docker_copy(
    context: &Path,
    ignore: &[String],
    dir: &Path,
    source: &str,
    dest: &Path,
    into_dir: bool,
) -> Result<(), String> {
    let from = context.join(source);
    if !from.exists() {
        return Err(format!("COPY {source}: not in the build context"));
    }
    let mut stack = vec![from.clone()];
    while let Some(path) = stack.pop() {
        let rel_context = path.strip_prefix(context).unwrap();
        if docker_ignored(ignore, rel_context) {
            continue;
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| e.to_string())? {
                stack.push(entry.map_err(|e| e.to_string())?.path());
            }
            continue;
        }
        let target = if path == from {
            if into_dir {
                dir.join(dest).join(path.file_name().unwrap())
            } else {
                dir.join(dest)
            }
        } else {
            dir.join(dest).join(path.strip_prefix(&from).unwrap())
        };
        std::fs::create_dir_all(target.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(&path, &target).map_err(|e| format!("copying {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Replays the build stage of `dockerfile` with `context` in a fresh directory: its COPY lines
/// (honouring `.dockerignore`), the file stubs its RUN lines make (`mkdir`, `echo >`, `touch`,
/// `rm`), and, where it runs cargo, `cargo metadata --locked --offline` (which loads every
/// manifest and target of the workspace) and, for `cargo build`, a real
/// `cargo check --locked --offline` of the binary: it reads every file the build reads (every
/// module, every `include_str!`) short of linking, on the dependencies `make test`'s clippy
/// already checked (host target, dev profile: what differs from the image build is the target,
/// the optimisation and the link, not which files cargo reads).
fn check_docker_build_context(dockerfile: &str, context: &Path) -> Result<(), String> {
    let dir = tempdir("docker-context");
    let ignore: Vec<String> = std::fs::read_to_string(context.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut workdir = PathBuf::new();
    let mut cargo_runs = 0;
    for (keyword, args) in dockerfile_instructions(dockerfile) {
        match keyword.as_str() {
            // Only the first (build) stage.
            "FROM" if cargo_runs > 0 || !workdir.as_os_str().is_empty() => break,
            "WORKDIR" => workdir = PathBuf::from(args.trim_start_matches('/')),
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                if words.iter().any(|w| w.starts_with("--from")) {
                    continue;
                }
                let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
                let (dest, sources) = words.split_last().ok_or("COPY without arguments")?;
                let into_dir = dest.ends_with('/') || sources.len() > 1;
                for source in sources {
                    docker_copy(
                        context,
                        &ignore,
                        &dir,
                        source,
                        &workdir.join(dest),
                        into_dir,
                    )?;
                }
            }
            "RUN" => {
                for step in args.split("&&").map(str::trim) {
                    let program = step.split_whitespace().next().unwrap_or("");
                    match program {
                        "mkdir" | "echo" | "touch" | "rm" => {
                            assert!(
                                !step.split_whitespace().skip(1).any(|w| w.starts_with('/')),
                                "an absolute path in a RUN step this check replays: {step}"
                            );
                            let status = Command::new("sh")
                                .args(["-c", step])
                                .current_dir(dir.join(&workdir))
                                .status()
                                .map_err(|e| e.to_string())?;
                            if !status.success() {
                                return Err(format!("RUN step {step:?} failed"));
                            }
                        }
                        "cargo" => {
                            cargo_runs += 1;
                            run_cargo(
                                &dir.join(&workdir),
                                // This platform's packages: what `cargo fetch --target`
                                // fetched (not, say, Windows-only ones).
                                &[
                                    "metadata",
                                    "--locked",
                                    "--offline",
                                    "--format-version=1",
                                    "--filter-platform=x86_64-unknown-linux-gnu",
                                ],
                            )
                            .map_err(|e| format!("at `{step}`: {e}"))?;
                            if step.starts_with("cargo build") {
                                run_cargo(
                                    &dir.join(&workdir),
                                    &[
                                        "check",
                                        "--locked",
                                        "--offline",
                                        "--bin",
                                        "ingestion-key-operator",
                                    ],
                                )
                                .map_err(|e| format!("at `{step}`: {e}"))?;
                            }
                        }
                        _ => {} // apk, rustup, cp, the --version check: not about the context
                    }
                }
            }
            _ => {}
        }
    }
    if cargo_runs == 0 {
        return Err("the build stage never runs cargo".into());
    }
    Ok(())
}

#[test]
fn dockerfile_build_context_holds_every_file_cargo_needs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    check_docker_build_context(&dockerfile, root())
        .unwrap_or_else(|e| panic!("the Dockerfile's build stage lacks files cargo needs: {e}"));

    // The check catches the bug it was written for: the Dockerfile of commit f1d3f6a copied only
    // Cargo.toml, Cargo.lock and src/ while Cargo.toml declared a bench (benches/scale.rs).
    let old = Command::new("git")
        .args(["show", "f1d3f6a:Dockerfile"])
        .current_dir(root())
        .output();
    match old {
        Ok(out) if out.status.success() => {
            let context = tempdir("f1d3f6a");
            let archive = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "git archive f1d3f6a | tar -x -C '{}'",
                    context.display()
                ))
                .current_dir(root())
                .status()
                .expect("git archive");
            assert!(archive.success(), "git archive f1d3f6a");
            let error = check_docker_build_context(&String::from_utf8_lossy(&out.stdout), &context)
                .expect_err("the Dockerfile of f1d3f6a must fail the check");
            assert!(error.contains("scale"), "{error}");
            let _ = std::fs::remove_dir_all(&context);
        }
        _ => eprintln!(
            "no git history with commit f1d3f6a here: the old Dockerfile is not re-checked"
        ),
    }
}

/// The same compiler flags in both image builds: the Dockerfile's RUSTFLAGS and
/// hack/build-image.sh's (`make image`), with their own source paths remapped to the same names.
#[test]
fn dockerfile_and_make_image_use_the_same_compiler_flags() {
    let normalise = |flags: &str| -> BTreeSet<String> {
        flags
            .split_whitespace()
            .map(|flag| match flag.strip_prefix("--remap-path-prefix=") {
                Some(mapping) => format!(
                    "--remap-path-prefix=*={}",
                    mapping.rsplit_once('=').expect("FROM=TO").1
                ),
                None => flag.to_string(),
            })
            .collect()
    };
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let docker = dockerfile
        .split("RUSTFLAGS=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("RUSTFLAGS in the Dockerfile");
    let script =
        std::fs::read_to_string(root().join("hack/build-image.sh")).expect("hack/build-image.sh");
    let make = script
        .split("RUSTFLAGS_IMAGE=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("RUSTFLAGS_IMAGE in hack/build-image.sh");
    assert_eq!(
        normalise(docker),
        normalise(make),
        "Dockerfile: {docker}\nhack/build-image.sh: {make}"
    );
    assert!(make.contains("-C target-feature=+crt-static"), "{make}");
    // Both build the release profile of the locked dependencies, offline.
    for needle in ["--locked", "--offline"] {
        assert!(
            dockerfile.contains(needle) && script.contains(needle),
            "{needle}"
        );
    }
    assert!(script.contains("PROFILE=${PROFILE:-release}"));
    assert!(dockerfile.contains("cargo build --release"));
}

// ---------------------------------------------------------------------------------------------
// The image, built here with buildah (hack/build-image.sh, what `make image` runs) and run from
// its own root filesystem with `buildah run`.
