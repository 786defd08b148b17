# One identity per piece, each with only what its code does (tests/unit/test_terraform.py checks the
# tables below against an expected table naming the code path behind each grant):
#   ingress    — Labelbox webhooks, REST API, `runs` and dead-letter pushes (lbtrain/api/ingress.py, push.py)
#   launcher   — one service per stage: claims a step, writes its inputs manifest, submits/cancels its
#                Vertex job as the jobs account (lbtrain/launch.py, adapters/vertex_backend.py)
#   job_events — a job ended: re-reads its state, reads outputs.json/error.json, next step or end
#                (lbtrain/completion.py)
#   reconciler — Cloud Scheduler's safety net: lost events, lost steps, cancels, rule releases
#                (lbtrain/reconcile.py, triggers.sweep)
#   dashboard  — Firestore views, champion.json, cancel/retry actions (lbtrain/api/dashboard.py)
#   jobs       — Vertex AI jobs: read/write run artifacts, upload/deploy models, publish job events.
#   invoker    — Pub/Sub push and Cloud Scheduler: call the private services with an OIDC token.
# Only the launchers may act as the jobs account; no service may act as another.
resource "google_service_account" "ingress" {
  project      = var.project
  account_id   = var.ingress_service_account_id
  display_name = "lbtrain ingress (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "launcher" {
  project      = var.project
  account_id   = var.launcher_service_account_id
  display_name = "lbtrain launchers (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "job_events" {
  project      = var.project
  account_id   = var.job_events_service_account_id
  display_name = "lbtrain job events (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "reconciler" {
  project      = var.project
  account_id   = var.reconciler_service_account_id
  display_name = "lbtrain reconciler (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

# Created whether or not var.deploy_dashboard: nothing runs as it then, and nobody may act as it.
resource "google_service_account" "dashboard" {
  project      = var.project
  account_id   = var.dashboard_service_account_id
  display_name = "lbtrain dashboard (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "jobs" {
  project      = var.project
  account_id   = var.jobs_service_account_id
  display_name = "lbtrain Vertex AI jobs (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "invoker" {
  project      = var.project
  account_id   = var.invoker_service_account_id
  display_name = "lbtrain Pub/Sub push and scheduler invoker (${var.deployment_name})"
  depends_on   = [google_project_service.apis]
}

# -- the services' grants (secrets: local.service_secrets, secrets.tf) ---------------------------
locals {
  service_members = {
    ingress    = google_service_account.ingress.member
    launcher   = google_service_account.launcher.member
    job_events = google_service_account.job_events.member
    reconciler = google_service_account.reconciler.member
    dashboard  = google_service_account.dashboard.member
  }

  # Project roles. Every service logs (logging.logWriter) and keeps its state in Firestore
  # (datastore.user: transactions; the dashboard too, its cancel/retry actions write).
  service_roles = {
    ingress = ["roles/datastore.user", "roles/logging.logWriter"] # no Vertex: it only publishes steps
    launcher = [
      "roles/datastore.user",
      "roles/logging.logWriter",
      "roles/aiplatform.user", # VertexBackend.submit/find_by_name/cancel (launch.launch_step, cancel_step)
      # CloudRunBackend: create/update the stage jobs, RunJob with overrides, list/get/cancel executions.
      # run.developer is the narrowest predefined role holding run.jobs.runWithOverrides.
      "roles/run.developer",
    ]
    job_events = [
      "roles/datastore.user",
      "roles/logging.logWriter",
      "roles/aiplatform.viewer", # VertexBackend.get_status only (completion.handle_job_event)
      "roles/run.viewer",        # CloudRunBackend.get_status/job_step: reads executions only
    ]
    reconciler = [
      "roles/datastore.user",
      "roles/logging.logWriter",
      "roles/aiplatform.user", # get_status, and cancel re-sent to a cancelling run's job (reconcile_once)
      "roles/run.developer",   # the same for Cloud Run executions (run.executions.cancel)
    ]
    dashboard = ["roles/datastore.user", "roles/logging.logWriter"] # no Vertex
  }

  # Role on the artifact bucket (objects only; nobody here may change its IAM or settings).
  service_bucket_roles = {
    ingress    = "roles/storage.objectViewer" # GET /runs/<id>: a running step's progress (progress.of_running_step)
    launcher   = "roles/storage.objectUser"   # launch_step writes runs/<id>/inputs/<stage>-a<n>.json (a redelivery rewrites it)
    job_events = "roles/storage.objectViewer" # completion.read_outputs/read_error: outputs.json, error.json
    reconciler = "roles/storage.objectViewer" # reconcile_once completes a lost event via handle_job_event
    dashboard  = "roles/storage.objectViewer" # champion.json (dashboard._champion), progress
  }

  # Topics each service publishes to: only intake.publish_step publishes (bus.publish("step-<stage>")),
  # for any stage (the next one, a retry, a rule release's modelrun, a cancel). Nobody publishes `runs`
  # from here; jobs (and the log sink) publish job events, Pub/Sub itself the dead letters.
  service_topics = {
    ingress    = ["step-modelrun", "step-etl", "step-train", "step-evaluate", "step-deploy", "step-prelabel"] # start_run, cancel/retry, dead letter → release
    launcher   = []                                                                                           # launches jobs, publishes nothing
    job_events = ["step-modelrun", "step-etl", "step-train", "step-evaluate", "step-deploy", "step-prelabel"] # next stage; a finished run releases a rule's held run
    reconciler = ["step-modelrun", "step-etl", "step-train", "step-evaluate", "step-deploy", "step-prelabel"] # re-drives lost steps, triggers.sweep
    dashboard  = ["step-modelrun", "step-etl", "step-train", "step-evaluate", "step-deploy", "step-prelabel"] # cancel/retry actions (ingress.cancel_run, retry_run)
  }
}

resource "google_project_iam_member" "service" {
  for_each = { for p in flatten([for svc, roles in local.service_roles : [for r in roles : { svc = svc, role = r }]]) : "${p.svc} ${p.role}" => p }
  project  = var.project
  role     = each.value.role
  member   = local.service_members[each.value.svc]
}

resource "google_storage_bucket_iam_member" "service_artifacts" {
  for_each = local.service_bucket_roles
  bucket   = google_storage_bucket.artifacts.name
  role     = each.value
  member   = local.service_members[each.key]
}

resource "google_pubsub_topic_iam_member" "service_publisher" {
  for_each = { for p in flatten([for svc, topics in local.service_topics : [for t in topics : { svc = svc, topic = t }]]) : "${p.svc} ${p.topic}" => p }
  project  = var.project
  topic    = google_pubsub_topic.topic[each.value.topic].name
  role     = "roles/pubsub.publisher"
  member   = local.service_members[each.value.svc]
}

# Launchers submit CustomJobs that run as the jobs service account (VertexBackend.submit passes
# JOB_SERVICE_ACCOUNT): iam.serviceAccountUser on that one account, for the launchers only.
resource "google_service_account_iam_member" "launcher_acts_as_jobs" {
  service_account_id = google_service_account.jobs.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.launcher.member
}

# -- jobs --------------------------------------------------------------------------------------
resource "google_project_iam_member" "jobs" {
  for_each = toset([
    "roles/aiplatform.user",   # deploy stage: upload models, deploy/undeploy endpoints
    "roles/logging.logWriter", # job logs
    "roles/run.developer",     # deploy stage on Cloud Run: create the serving service, revisions, traffic (jobs/cloudrun_deploy.py)
  ])
  project = var.project
  role    = each.value
  member  = google_service_account.jobs.member
}

resource "google_storage_bucket_iam_member" "jobs_artifacts" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.jobs.member
}

# Data rows whose media lives in the customer's own buckets (var.media_buckets): read-only, jobs only.
resource "google_storage_bucket_iam_member" "jobs_media" {
  for_each = toset(var.media_buckets)
  bucket   = each.value
  role     = "roles/storage.objectViewer"
  member   = google_service_account.jobs.member
}

resource "google_pubsub_topic_iam_member" "jobs_publish_events" {
  project = var.project
  topic   = google_pubsub_topic.topic["job-events"].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.jobs.member
}

# The modelrun job creates a rule run's model run, etl exports it and evaluate uploads predictions: the API
# key only, read at run time by its resource name (launcher_env.LABELBOX_API_KEY_SECRET, lbtrain/secrets.py).
resource "google_secret_manager_secret_iam_member" "jobs_labelbox_key" {
  project   = var.project
  secret_id = google_secret_manager_secret.secret["LABELBOX_API_KEY"].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.jobs.member
}

# The deploy job's Cloud Run serving revisions run as the jobs account (they read the model from the
# artifact bucket): creating a revision that runs as an account needs actAs on it, for this one account.
resource "google_service_account_iam_member" "jobs_act_as_jobs" {
  service_account_id = google_service_account.jobs.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.jobs.member
}

# -- invoker -----------------------------------------------------------------------------------
# Pub/Sub mints the push OIDC tokens as the invoker.
resource "google_service_account_iam_member" "pubsub_mints_invoker_tokens" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_cloud_run_v2_service_iam_member" "launcher_invoker" {
  for_each = google_cloud_run_v2_service.launcher
  project  = var.project
  location = var.region
  name     = each.value.name
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

resource "google_cloud_run_v2_service_iam_member" "job_events_invoker" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.job_events.name
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

resource "google_cloud_run_v2_service_iam_member" "reconciler_invoker" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.reconciler.name
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

# Labelbox calls the ingress without a Google identity; it authenticates with the webhook signature
# (LABELBOX_WEBHOOK_SECRET), the REST API with API_TOKEN, push requests with the invoker's OIDC
# token, whose signature the app verifies itself (PUSH_AUTH=oidc: nothing else checked it). The
# grants above make Cloud Run IAM check it on the private services (PUSH_AUTH=cloudrun-iam).
resource "google_cloud_run_v2_service_iam_member" "ingress_public" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.ingress.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "dashboard_viewers" {
  for_each = var.deploy_dashboard ? toset(var.dashboard_invokers) : toset([])
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_service.dashboard[0].name
  role     = "roles/run.invoker"
  member   = each.value
}
