//! Task definition rules ECS would reject at deploy time, checked while resolving so a push
//! gets `path:line:column` instead of a failed RegisterTaskDefinition or CreateService.

use serde_json::{Map, Value};

use super::yaml::{Node, Pos};
use super::{Problem, Report};

/// Fargate's task sizes: CPU units and the memory (MiB) ECS accepts with each.
fn fargate_memory(cpu: u64) -> Option<Vec<u64>> {
    let range = |from: u64, to: u64, step: u64| (from..=to).step_by(step as usize).collect();
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => range(1024, 4096, 1024),
        1024 => range(2048, 8192, 1024),
        2048 => range(4096, 16384, 1024),
        4096 => range(8192, 30720, 1024),
        8192 => range(16384, 61440, 4096),
        16384 => range(32768, 122880, 8192),
        _ => return None,
    })
}

/// `1024`, `"1024"` or `"1 vCPU"` as CPU units; `2048`, `"2048"` or `"2 GB"` as MiB.
fn units(value: &Value, per_unit: u64, suffix: &str) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            // "1 vCPU", "1vcpu", "2 GB", "2GB": ECS reads the unit case-insensitively.
            let lower = s.trim().to_ascii_lowercase();
            match lower.strip_suffix(&suffix.trim().to_ascii_lowercase()) {
                Some(n) => n
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .map(|n| (n * per_unit as f64).round() as u64),
                None => lower.parse().ok(),
            }
        }
        _ => None,
    }
}

fn is_fargate(td: &Map<String, Value>, service: &Map<String, Value>) -> bool {
    let in_list = |v: Option<&Value>| {
        v.and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("FARGATE")))
    };
    in_list(td.get("requiresCompatibilities"))
        || service.get("launchType").and_then(Value::as_str) == Some("FARGATE")
        || service
            .get("capacityProviderStrategy")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter().any(|p| {
                    p.get("capacityProvider")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.starts_with("FARGATE"))
                })
            })
}

/// Fargate sizes, Fargate's network mode, and awsvpc's network configuration. `td_node` and
/// `service_node` give positions; the JSON values are the interpolated inputs.
pub fn check(
    (td_file, td_node, td): (&str, &Node, &Map<String, Value>),
    (app_file, service_node, service): (&str, Option<&Node>, &Map<String, Value>),
    problems: &mut Vec<Problem>,
) {
    let mut td_report = Report::new(td_file, problems);
    let at = |key: &str| td_node.get(key).map_or(td_node.pos, |n| n.pos);
    let network_mode = td.get("networkMode").and_then(Value::as_str);
    if is_fargate(td, service) {
        if network_mode != Some("awsvpc") {
            td_report.at(
                at("networkMode"),
                "Fargate tasks need `networkMode: awsvpc` in the task definition",
            );
        }
        match (td.get("cpu"), td.get("memory")) {
            (Some(cpu), Some(memory)) => {
                let (cpu_units, mib) = (units(cpu, 1024, " vCPU"), units(memory, 1024, " GB"));
                match cpu_units.and_then(fargate_memory) {
                    None => td_report.at(
                        at("cpu"),
                        format!("Fargate has no task size with cpu {cpu}; use 256, 512, 1024, 2048, 4096, 8192 or 16384"),
                    ),
                    Some(allowed) if !mib.is_some_and(|m| allowed.contains(&m)) => {
                        let (first, last) = (allowed[0], allowed[allowed.len() - 1]);
                        td_report.at(
                            at("memory"),
                            format!(
                                "Fargate refuses memory {memory} with cpu {cpu}; with that cpu it takes {first} to {last} MiB ({})",
                                allowed.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
            _ => td_report.at(
                td_node.pos,
                "Fargate tasks need task-level `cpu` and `memory` in the task definition",
            ),
        }
    }
    if let Some(controller) = service
        .get("deploymentController")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .filter(|t| *t != "ECS")
    {
        let pos = service_node
            .and_then(|n| n.get("deploymentController"))
            .map_or(Pos::at(1, 1), |n| n.pos);
        Report::new(app_file, problems).at(
            pos,
            format!("`deploymentController.type: {controller}` hands deployments to another tool, and fleetsync deploys through ECS rolling updates: remove it or set it to ECS"),
        );
    }
    if network_mode == Some("awsvpc")
        && service
            .get("networkConfiguration")
            .and_then(|n| n.get("awsvpcConfiguration"))
            .is_none()
    {
        Report::new(app_file, problems).at(
            service_node.map_or(Pos::at(1, 1), |n| n.pos),
            "the task definition uses `networkMode: awsvpc`, so the service needs `networkConfiguration.awsvpcConfiguration` with its subnets and security groups",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_every_form_ecs_takes() {
        assert_eq!(units(&"1 vCPU".into(), 1024, " vCPU"), Some(1024));
        assert_eq!(units(&"0.25 vCPU".into(), 1024, " vCPU"), Some(256));
        assert_eq!(units(&"2 GB".into(), 1024, " GB"), Some(2048));
        assert_eq!(units(&"2GB".into(), 1024, " GB"), Some(2048));
        assert_eq!(units(&"1vcpu".into(), 1024, " vCPU"), Some(1024));
        assert_eq!(units(&"512".into(), 1024, " GB"), Some(512));
        assert_eq!(units(&serde_json::json!(4096), 1024, " GB"), Some(4096));
        assert_eq!(fargate_memory(512), Some(vec![1024, 2048, 3072, 4096]));
        assert_eq!(fargate_memory(300), None);
    }
}
