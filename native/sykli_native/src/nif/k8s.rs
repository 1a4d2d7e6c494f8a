use std::collections::BTreeMap;
use sykli_core::manifest::{self, names, yaml, BuildOptions};
use sykli_core::pipeline::{self, Pipeline, Resource, Task};
use sykli_core::source::SourcePlan;

use super::NifError;

/// A Job name unique to the run: `sykli-<task>-<run id>`, a DNS label of at most 63.
#[rustler::nif]
fn k8s_job_name(task_name: String, run_id: String) -> String {
    names::job_name(&task_name, &run_id)
}

/// One task (pipeline JSON) → its Job as JSON.
#[rustler::nif(schedule = "DirtyCpu")]
fn k8s_build_job(
    task_json: String,
    resources_json: String,
    job_name: String,
    options_json: String,
) -> Result<String, NifError> {
    let task: Task = pipeline::from_json(task_json.as_bytes(), "task")?;
    let resources: BTreeMap<String, Resource> =
        pipeline::from_json(resources_json.as_bytes(), "resources")?;
    let opts: BuildOptions = pipeline::from_json(options_json.as_bytes(), "options")?;
    let plan = SourcePlan::from_options(&opts.source)?;
    let job = manifest::build_job(&task, &resources, &job_name, &plan, &opts)?;
    Ok(serde_json::to_string(&job).unwrap_or_default())
}

/// A whole pipeline → every Job, as multi-document YAML or a JSON `List`, kubectl-ready.
#[rustler::nif(schedule = "DirtyCpu")]
fn k8s_render_pipeline(
    pipeline_json: String,
    options_json: String,
    format: String,
) -> Result<String, NifError> {
    let pipeline = Pipeline::from_json(pipeline_json.as_bytes())?;
    let opts: BuildOptions = pipeline::from_json(options_json.as_bytes(), "options")?;
    let jobs: Vec<serde_json::Value> = manifest::build_pipeline(&pipeline, &opts)?
        .iter()
        .map(|j| serde_json::to_value(j).unwrap_or_default())
        .collect();
    match format.as_str() {
        "yaml" => Ok(yaml::to_multi_doc(&jobs)),
        "json" => Ok(serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": jobs
        }))
        .unwrap_or_default()
            + "\n"),
        other => Err(sykli_core::Error::InvalidOption {
            key: "output".into(),
            message: format!("{other:?} is not yaml or json"),
        }
        .into()),
    }
}
