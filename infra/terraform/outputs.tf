output "ingress_url" {
  description = "Base URL of the ingress (REST API: /runs…; LBTRAIN_API_URL of the CLI)."
  value       = google_cloud_run_v2_service.ingress.uri
}

output "labelbox_url" {
  description = "URL to paste into Labelbox's model-training integration: it calls GET <url>/models and POST <url>/model_run, signed with LABELBOX_WEBHOOK_SECRET."
  value       = google_cloud_run_v2_service.ingress.uri
}

output "webhook_url" {
  description = "The model-run webhook endpoint Labelbox posts to."
  value       = "${google_cloud_run_v2_service.ingress.uri}/model_run"
}

output "dashboard_url" {
  description = "Dashboard (IAM-protected), empty unless deploy_dashboard."
  value       = var.deploy_dashboard ? google_cloud_run_v2_service.dashboard[0].uri : ""
}

output "artifact_bucket" {
  description = "Bucket of ARTIFACT_ROOT."
  value       = google_storage_bucket.artifacts.name
}

output "artifact_root" {
  value = "gs://${google_storage_bucket.artifacts.name}"
}

output "image_registry" {
  description = "Where cloudbuild.yaml pushes (its _REPO)."
  value       = local.registry
}

output "topics" {
  value = { for k, t in google_pubsub_topic.topic : k => t.name }
}

output "service_accounts" {
  value = {
    ingress    = google_service_account.ingress.email
    launcher   = google_service_account.launcher.email
    job_events = google_service_account.job_events.email
    reconciler = google_service_account.reconciler.email
    dashboard  = google_service_account.dashboard.email
    jobs       = google_service_account.jobs.email
    invoker    = google_service_account.invoker.email
  }
}

output "secret_ids" {
  description = "Add each value once: printf %s \"$VALUE\" | gcloud secrets versions add <id> --data-file=-"
  value       = { for k, s in google_secret_manager_secret.secret : k => s.secret_id }
}
