# Names and wiring in one place. tests/unit/test_terraform.py reads these maps literally and checks
# them against the code (pubsub topology, Config env vars, cloudbuild.yaml images): keep them literal.
locals {
  registry = var.image_registry != "" ? var.image_registry : "${var.region}-docker.pkg.dev/${var.project}/${var.artifact_registry_repository}"
  bucket   = var.artifact_bucket != "" ? var.artifact_bucket : "${var.project}-lbtrain-artifacts"

  # Every image a resource here runs, as cloudbuild.yaml tags it (${_REPO}/<name>:${COMMIT_SHA}).
  images = {
    ingress    = "${local.registry}/ingress:${var.image_tag}"
    launcher   = "${local.registry}/launcher:${var.image_tag}"
    job_events = "${local.registry}/job-events:${var.image_tag}"
    reconciler = "${local.registry}/reconciler:${var.image_tag}"
    jobs_cpu   = "${local.registry}/jobs-cpu:${var.image_tag}"
    jobs_gpu   = "${local.registry}/jobs-gpu:${var.image_tag}"
    serving    = "${local.registry}/serving:${var.image_tag}"
    # Only used when var.deploy_dashboard is true (cloudbuild.yaml builds it either way).
    dashboard = "${local.registry}/dashboard:${var.image_tag}"
  }

  # Stages a launcher service is deployed for (lbtrain.api.push.all_stages()); modelrun: a retraining
  # rule run's first step, the job that creates its Labelbox model run; prelabel: after deploy, the
  # job that pre-labels the project's unlabeled rows and orders its labeling queue.
  stages = ["modelrun", "etl", "train", "evaluate", "deploy", "prelabel"]

  # The deployment's Pub/Sub topology, as lbtrain.adapters.pubsub_bus.topology() builds it locally:
  # topic {dep}-<key>, push subscription {dep}-<key>-push to <service><path>; every subscription but
  # the dead-letter topic's own dead-letters to {dep}-dead-letter.
  push_routes = {
    "runs"          = { service = "ingress", path = "/push/runs", dead_letter = true }
    "job-events"    = { service = "job-events", path = "/push/job-events", dead_letter = true }
    "step-modelrun" = { service = "launcher-modelrun", path = "/push/step/modelrun", dead_letter = true }
    "step-etl"      = { service = "launcher-etl", path = "/push/step/etl", dead_letter = true }
    "step-train"    = { service = "launcher-train", path = "/push/step/train", dead_letter = true }
    "step-evaluate" = { service = "launcher-evaluate", path = "/push/step/evaluate", dead_letter = true }
    "step-deploy"   = { service = "launcher-deploy", path = "/push/step/deploy", dead_letter = true }
    "step-prelabel" = { service = "launcher-prelabel", path = "/push/step/prelabel", dead_letter = true }
    "dead-letter"   = { service = "ingress", path = "/push/dead-letter", dead_letter = false }
  }
  ack_deadline_seconds = 60
  minimum_backoff      = "0.200s"
  maximum_backoff      = "10s"

  # Push endpoints' base URLs, by the service keys push_routes uses.
  service_uris = {
    "ingress"           = google_cloud_run_v2_service.ingress.uri
    "job-events"        = google_cloud_run_v2_service.job_events.uri
    "launcher-modelrun" = google_cloud_run_v2_service.launcher["modelrun"].uri
    "launcher-etl"      = google_cloud_run_v2_service.launcher["etl"].uri
    "launcher-train"    = google_cloud_run_v2_service.launcher["train"].uri
    "launcher-evaluate" = google_cloud_run_v2_service.launcher["evaluate"].uri
    "launcher-deploy"   = google_cloud_run_v2_service.launcher["deploy"].uri
    "launcher-prelabel" = google_cloud_run_v2_service.launcher["prelabel"].uri
  }

  # OIDC audience of each service (a Cloud Run custom audience, so it is known before the URL is):
  # "${local.audience_prefix}/<service key>". Every service that takes pushes gets it as PUSH_AUDIENCE
  # (run.tf) and checks it: Cloud Run checks it too on the private ones.
  audience_prefix = "${var.project}/${var.deployment_name}"

  # Environment of every service and function (names are lbtrain.config fields, read by from_env).
  common_env = {
    DEPLOYMENT_NAME      = var.deployment_name
    GOOGLE_CLOUD_PROJECT = var.project
    REGION               = var.region
    ARTIFACT_ROOT        = "gs://${local.bucket}"
    JOB_BACKEND          = var.job_backend
    LABELBOX_BACKEND     = var.labelbox_backend
    # Admission (lbtrain/admission.py): whoever starts, retries or ends a run applies the same limits.
    LBTRAIN_MAX_ACTIVE_RUNS          = var.max_active_runs
    LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE = var.max_active_runs_per_type
    LBTRAIN_MONTHLY_NODE_HOURS       = var.monthly_node_hours
    # Automatic retries (lbtrain/failures.py): job-events and the launchers decide, the reconciler re-offers.
    LBTRAIN_MAX_ATTEMPTS       = var.max_attempts
    LBTRAIN_RETRY_BASE_SECONDS = var.retry_base_seconds
    LBTRAIN_RETRY_CAP_SECONDS  = var.retry_cap_seconds
    # Which backend runs each stage (launchers submit, job-events and the reconciler read and cancel by id).
    STAGE_BACKENDS = var.stage_backends
  }
  # What launchers need to build Vertex jobs (empty values are left unset: the code's defaults apply).
  # Jobs get no secret mounts: the launcher passes LABELBOX_API_KEY_SECRET, the Labelbox API key's
  # resource name (never its value), and the job reads it as the jobs service account (iam.tf).
  launcher_env = {
    JOB_IMAGE               = local.images.jobs_cpu
    JOB_IMAGE_GPU           = local.images.jobs_gpu
    SERVING_IMAGE           = local.images.serving
    SERVING_MACHINE         = var.serving_machine
    JOB_SERVICE_ACCOUNT     = google_service_account.jobs.email
    JOB_MACHINES            = var.job_machines
    MODEL_OPTIONS           = var.model_options
    SERVING_BACKENDS        = var.serving_backends
    LBTRAIN_MIN_EXAMPLES    = var.min_examples
    LABELBOX_API_KEY_SECRET = "projects/${var.project}/secrets/${var.labelbox_api_key_secret_id}/versions/latest"
    # The only buckets (besides lbtrain's own) whose gs:// data rows the jobs fetch (lbtrain/fetch.py).
    MEDIA_BUCKETS = join(",", var.media_buckets)
  }

  # Secret env var → Secret Manager secret id. Values are added with gcloud, never here.
  secrets = {
    LABELBOX_API_KEY        = var.labelbox_api_key_secret_id
    LABELBOX_WEBHOOK_SECRET = var.labelbox_webhook_secret_secret_id
    API_TOKEN               = var.api_token_secret_id
  }
  # Which secrets each service mounts (latest version, as env vars); its account may read exactly
  # these (secrets.tf). LABELBOX_API_KEY: reporting.report_status (every service reports a run's
  # Labelbox status somewhere) and the dashboard's Labelbox status history.
  service_secrets = {
    ingress    = ["LABELBOX_API_KEY", "LABELBOX_WEBHOOK_SECRET", "API_TOKEN"] # refusals, cancel/retry, dead letters; signature.verify; REST API
    launcher   = ["LABELBOX_API_KEY"]                                         # launch_step: TRAINING_MODEL/… statuses
    job_events = ["LABELBOX_API_KEY"]                                         # completion: COMPLETE/FAILED, model_run_created
    reconciler = ["LABELBOX_API_KEY"]                                         # a lost event completed via handle_job_event
    dashboard  = ["LABELBOX_API_KEY", "API_TOKEN"]                            # Labelbox status history, cancel/retry; actions' token
  }

  # Vertex state-change entries of custom jobs (task "service"; container output is task workerpoolN-M),
  # normalized by lbtrain.messages.parse_job_event; the job's state is re-read from Vertex.
  # Cloud Run jobs' system log (execution started/completed/failed); another deployment's entries are no-ops.
  cloud_run_job_log_filter = "resource.type=\"cloud_run_job\" AND logName=\"projects/${var.project}/logs/run.googleapis.com%2Fvarlog%2Fsystem\""
  job_state_log_filter     = "resource.type=\"ml_job\" AND resource.labels.task_name=\"service\""

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
