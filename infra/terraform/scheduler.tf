# The safety net runs every few minutes (docs/architecture.md §1); running it twice is harmless.
resource "google_cloud_scheduler_job" "reconcile" {
  project          = var.project
  region           = var.region
  name             = "${var.deployment_name}-reconcile"
  description      = "lbtrain: re-drive steps whose message or completion event was lost"
  schedule         = var.reconcile_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "320s"

  retry_config {
    retry_count = 0 # the next tick is the retry
  }

  http_target {
    http_method = "POST"
    uri         = google_cloud_run_v2_service.reconciler.uri
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = "${local.audience_prefix}/reconciler"
    }
  }
  depends_on = [google_cloud_run_v2_service_iam_member.reconciler_invoker, google_project_service.apis]
}
