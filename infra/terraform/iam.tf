# Three identities, each with only what its code does:
#   runtime — services and functions: Firestore state, publish steps, launch/read Vertex jobs,
#             read/write run artifacts, read the secrets they mount.
#   jobs    — Vertex AI jobs: read/write run artifacts, upload/deploy models, publish job events.
#   invoker — Pub/Sub push and Cloud Scheduler: call the private services with an OIDC token.
resource "google_service_account" "runtime" {
  project      = var.project
  account_id   = var.runtime_service_account_id
  display_name = "lbtrain services (${var.deployment_name})"
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

# -- runtime -----------------------------------------------------------------------------------
resource "google_project_iam_member" "runtime" {
  for_each = toset([
    "roles/datastore.user",    # Firestore runs/steps/jobs/deliveries (transactions)
    "roles/aiplatform.user",   # launch, read and cancel Vertex jobs
    "roles/logging.logWriter", # structured logs
  ])
  project = var.project
  role    = each.value
  member  = google_service_account.runtime.member
}

resource "google_storage_bucket_iam_member" "runtime_artifacts" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin" # job inputs manifests, outputs.json, predictions
  member = google_service_account.runtime.member
}

# Services publish run requests and step messages (never job events: jobs and the log sink do).
resource "google_pubsub_topic_iam_member" "runtime_publisher" {
  for_each = toset(concat(["runs"], [for s in local.stages : "step-${s}"]))
  project  = var.project
  topic    = google_pubsub_topic.topic[each.value].name
  role     = "roles/pubsub.publisher"
  member   = google_service_account.runtime.member
}

# Launchers submit CustomJobs that run as the jobs service account.
resource "google_service_account_iam_member" "runtime_acts_as_jobs" {
  service_account_id = google_service_account.jobs.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime.member
}

# -- jobs --------------------------------------------------------------------------------------
resource "google_project_iam_member" "jobs" {
  for_each = toset([
    "roles/aiplatform.user",   # deploy stage: upload models, deploy/undeploy endpoints
    "roles/logging.logWriter", # job logs
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
