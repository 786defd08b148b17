# Vertex AI job state changes → {dep}-job-events, next to the JobEvents jobs publish themselves.
# Each deployment's sink sees every ml_job of the project; events for jobs another deployment
# launched are no-ops (unknown job id in this deployment's jobs index).
resource "google_logging_project_sink" "job_events" {
  project                = var.project
  name                   = "${var.deployment_name}-ml-job-events"
  description            = "lbtrain: Vertex AI job state changes to the job-events topic"
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic["job-events"].id}"
  filter                 = local.job_state_log_filter
  unique_writer_identity = true
}

resource "google_pubsub_topic_iam_member" "log_sink_publisher" {
  project = var.project
  topic   = google_pubsub_topic.topic["job-events"].name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.job_events.writer_identity
}

# Cloud Run job executions' system log (started, completed, failed, cancelled) → the same topic
# (CloudRunBackend; messages.job_event_from_log_entry reads job_name and execution_name).
resource "google_logging_project_sink" "cloud_run_job_events" {
  project                = var.project
  name                   = "${var.deployment_name}-run-job-events"
  description            = "lbtrain: Cloud Run job executions' state changes to the job-events topic"
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic["job-events"].id}"
  filter                 = local.cloud_run_job_log_filter
  unique_writer_identity = true
}

resource "google_pubsub_topic_iam_member" "cloud_run_log_sink_publisher" {
  project = var.project
  topic   = google_pubsub_topic.topic["job-events"].name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.cloud_run_job_events.writer_identity
}
