//! The checks of a whole `gateway.toml` that no single table can make
//! alone: limits against each other, unique names and routes, the device
//! key's location. Each error is the dotted key and the problem.

use std::collections::BTreeMap;

use super::plugin::{config_value_string, normalize_route, validate_jobs, validate_route};
use super::{GatewayConfig, parse_http_origin, validate_host_port, validate_name};

impl GatewayConfig {
    /// Every check of the loaded file; the first failure as (dotted key,
    /// problem), which the loader turns into an error naming the file.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let h = &self.http;
        positive("http.max_body_bytes", h.max_body_bytes as u64)?;
        if h.max_header_bytes < 8192 {
            return Err((
                "http.max_header_bytes".into(),
                format!("{} is below the minimum of 8192 bytes", h.max_header_bytes),
            ));
        }
        positive("http.max_headers", h.max_headers as u64)?;
        positive("http.call_timeout_ms", h.call_timeout_ms)?;
        positive("http.header_read_timeout_ms", h.header_read_timeout_ms)?;
        positive("http.body_read_timeout_ms", h.body_read_timeout_ms)?;
        positive("http.max_connections", h.max_connections as u64)?;
        positive(
            "http.max_connections_per_peer",
            h.max_connections_per_peer as u64,
        )?;
        positive(
            "http.h2_keep_alive_interval_ms",
            h.h2_keep_alive_interval_ms,
        )?;
        positive("http.h2_keep_alive_timeout_ms", h.h2_keep_alive_timeout_ms)?;
        positive(
            "http.h2_max_concurrent_streams",
            u64::from(h.h2_max_concurrent_streams),
        )?;
        if let Some(tls) = &h.tls {
            tls.validate()?;
        }
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        self.reload.validate()?;
        self.validate_key()?;
        self.self_check.validate(&self.plugins)?;
        let r = &self.runtime;
        positive("runtime.max_instances", u64::from(r.max_instances))?;
        positive("runtime.max_memory_mb", r.max_memory_mb)?;
        positive("runtime.tick_ms", r.tick_ms)?;
        positive("runtime.job_compile_slots", u64::from(r.job_compile_slots))?;
        if r.max_memory_mb > 4096 {
            return Err((
                "runtime.max_memory_mb".into(),
                format!(
                    "{} MiB is above the 4096 MiB a 32-bit memory can address",
                    r.max_memory_mb
                ),
            ));
        }
        self.epochs.validate()?;
        if let Some(u) = &self.upstream {
            u.validate()?;
        }
        let mut hosts = BTreeMap::new();
        for (i, r) in self.registries.iter().enumerate() {
            r.validate()
                .map_err(|(k, problem)| (format!("registry[{i}].{k}"), problem))?;
            if let Some(first) = hosts.insert(r.host.clone(), i) {
                return Err((
                    format!("registry[{i}].host"),
                    format!("`{}` is already configured by registry[{first}]", r.host),
                ));
            }
        }
        let mut names = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            if let Err(problem) = validate_name(&p.name) {
                return Err((key("name"), problem));
            }
            if let Some(first) = names.insert(p.name.clone(), i) {
                return Err((
                    key("name"),
                    format!("`{}` is already the name of plugin[{first}]", p.name),
                ));
            }
            if let Some(route) = &p.route {
                if let Err(problem) = validate_route(route) {
                    return Err((key("route"), problem));
                }
                let normalized = normalize_route(route);
                if let Some(first) = routes.insert(normalized, i) {
                    return Err((
                        key("route"),
                        format!("route `{route}` is already taken by plugin[{first}]"),
                    ));
                }
            }
            positive(&key("limits.memory_mb"), p.limits.memory_mb)?;
            positive(&key("limits.cpu_ms"), p.limits.cpu_ms)?;
            positive(&key("limits.wall_ms"), p.limits.wall_ms)?;
            if p.limits.memory_mb > r.max_memory_mb {
                return Err((
                    key("limits.memory_mb"),
                    format!(
                        "{} MiB is above runtime.max_memory_mb ({} MiB)",
                        p.limits.memory_mb, r.max_memory_mb
                    ),
                ));
            }
            if p.tick_interval_ms == Some(0) {
                return Err((
                    key("tick_interval_ms"),
                    "must be greater than 0 (omit it for no ticks)".into(),
                ));
            }
            if p.limits.fuel == Some(0) {
                return Err((
                    key("limits.fuel"),
                    "must be greater than 0 (omit it for no fuel limit)".into(),
                ));
            }
            if let Some(b) = &p.blobs {
                positive(&key("blobs.quota_bytes"), b.quota_bytes)?;
            }
            for (j, origin) in p.outbound.http.iter().enumerate() {
                if let Err(problem) = parse_http_origin(origin) {
                    return Err((key(&format!("outbound.http[{j}]")), problem));
                }
            }
            if let Some(j) = &p.jobs {
                validate_jobs(j).map_err(|(k, problem)| (key(&format!("jobs.{k}")), problem))?;
            }
            for (name, ms) in [
                ("fetch_deadline_ms", p.outbound.fetch_deadline_ms),
                ("blob_deadline_ms", p.outbound.blob_deadline_ms),
            ] {
                if let Some(ms) = ms {
                    positive(&key(&format!("outbound.{name}")), ms)?;
                }
            }
            for (j, target) in p.outbound.udp.iter().enumerate() {
                if let Err(problem) = validate_host_port(target) {
                    return Err((key(&format!("outbound.udp[{j}]")), problem));
                }
            }
            p.validate_source()
                .map_err(|(k, problem)| (key(&k), problem))?;
            if let Some(mqtt) = &p.mqtt {
                mqtt.validate()
                    .map_err(|(k, problem)| (key(&format!("mqtt.{k}")), problem))?;
            }
            for (k, v) in &p.config {
                if config_value_string(v).is_none() {
                    return Err((
                        key(&format!("config.{k}")),
                        format!("must be a string, number or boolean, not {}", v.type_str()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `key` (a token URI) against `key_path` and `[pkcs11]`.
    fn validate_key(&self) -> Result<(), (String, String)> {
        self.pkcs11.validate()?;
        let Some(uri) = &self.key else {
            return Ok(());
        };
        let at = |problem: String| Err(("key".to_string(), problem));
        if self.key_path.is_some() {
            return at("give the device key once: `key` (a token) or `key_path` (a file)".into());
        }
        if let Err(e) = uri.require_key() {
            return at(e.to_string());
        }
        match (&uri.module_path, &self.pkcs11.module) {
            (None, None) => at(
                "a token key needs its PKCS#11 module: set `[pkcs11] module = \"/path/to/module.so\"`"
                    .into(),
            ),
            (Some(a), Some(b)) if a != b => at(format!(
                "the URI's module-path {} is not `[pkcs11] module` {}; give one",
                a.display(),
                b.display()
            )),
            _ => Ok(()),
        }
    }
}

/// `key` must be greater than 0.
pub(super) fn positive(key: &str, value: u64) -> Result<(), (String, String)> {
    if value == 0 {
        Err((key.to_string(), "must be greater than 0".into()))
    } else {
        Ok(())
    }
}
