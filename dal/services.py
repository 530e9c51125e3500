"""The services as async callers see them: ``await s.orders.place(...)``.

Each service is a synchronous class over one ``Tx`` (``OrderService(tx).place(...)``). Here
each gets an async facade whose methods carry the service methods' own signatures, so a type
checker follows a call from a handler to the service and checks its arguments. A facade runs
nothing itself: it hands the method to its runner — a ``Session`` runs it inside its
transaction, a ``ScopedDal`` as a transaction of its own.

A test checks that every public method of every service class is exposed here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    get_type_hints,
    overload,
)

from dal.accounts import AccountService, PortfolioService
from dal.audit import AuditLogger
from dal.brokers import BrokerService
from dal.cash import CashService
from dal.equity import EquityService
from dal.instruments import InstrumentService
from dal.marks import MarkService
from dal.orders import OrderService
from dal.positions import PositionService
from dal.risk import RiskService
from dal.scope import Tx
from dal.strategies import StrategyRunService, StrategyService
from dal.trades import TradeService
from dal.unapplied_events import UnappliedEventService
from dal.user_configs import AlertService, ScheduleService, ScreenerService
from dal.users import UserService
from dal.valuation import ValuationService

P = ParamSpec("P")
R = TypeVar("R")


class MethodRunner(Protocol):
    async def run_method(
        self,
        service: type[Any],
        method: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        """Run ``method(service(tx), *args, **kwargs)`` in a transaction."""
        ...


class Facade:
    """The async face of one service class (``service``) for one runner."""

    service: ClassVar[type[Any]]
    __slots__ = ("_runner",)

    def __init__(self, runner: MethodRunner) -> None:
        self._runner = runner


class Exposed(Generic[P, R]):
    """A service method on a facade: ``facade.name(...)`` is ``await``-able and returns what
    the service method returns."""

    def __init__(self, method: Callable[Concatenate[Any, P], R]) -> None:
        self.method = method  # gives the types; the call looks the name up on the service
        self.name = method.__name__

    @overload
    def __get__(self, facade: None, owner: type[Facade]) -> Exposed[P, R]: ...

    @overload
    def __get__(
        self, facade: Facade, owner: type[Facade]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(
        self, facade: Facade | None, owner: type[Facade]
    ) -> Exposed[P, R] | Callable[P, Coroutine[Any, Any, R]]:
        if facade is None:
            return self
        runner, service = facade._runner, owner.service
        method = getattr(service, self.name)

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await runner.run_method(service, method, args, kwargs)

        return call


expose = Exposed


class Users(Facade):
    service = UserService
    admins = expose(UserService.admins)
    approve = expose(UserService.approve)
    bootstrap_admins = expose(UserService.bootstrap_admins)
    deactivate = expose(UserService.deactivate)
    demote = expose(UserService.demote)
    find = expose(UserService.find)
    find_by_id = expose(UserService.find_by_id)
    list_all = expose(UserService.list_all)
    lookup = expose(UserService.lookup)
    me = expose(UserService.me)
    pending = expose(UserService.pending)
    promote = expose(UserService.promote)
    reactivate = expose(UserService.reactivate)
    register = expose(UserService.register)
    revoke = expose(UserService.revoke)
    set_muted = expose(UserService.set_muted)
    set_notify = expose(UserService.set_notify)
    set_reachable = expose(UserService.set_reachable)
    set_timezone = expose(UserService.set_timezone)


class Brokers(Facade):
    service = BrokerService
    create = expose(BrokerService.create)
    list = expose(BrokerService.list)


class Accounts(Facade):
    service = AccountService
    by_name = expose(AccountService.by_name)
    create = expose(AccountService.create)
    default_portfolio = expose(AccountService.default_portfolio)
    delete = expose(AccountService.delete)
    get = expose(AccountService.get)
    list = expose(AccountService.list)
    list_for_user = expose(AccountService.list_for_user)
    set_margin = expose(AccountService.set_margin)
    set_trading_mode = expose(AccountService.set_trading_mode)


class Portfolios(Facade):
    service = PortfolioService
    archive = expose(PortfolioService.archive)
    broker_code = expose(PortfolioService.broker_code)
    by_name = expose(PortfolioService.by_name)
    create = expose(PortfolioService.create)
    current = expose(PortfolioService.current)
    default = expose(PortfolioService.default)
    delete = expose(PortfolioService.delete)
    get = expose(PortfolioService.get)
    list = expose(PortfolioService.list)
    owner_zone = expose(PortfolioService.owner_zone)
    set_current = expose(PortfolioService.set_current)
    set_default = expose(PortfolioService.set_default)
    update = expose(PortfolioService.update)


class Strategies(Facade):
    service = StrategyService
    check_start = expose(StrategyService.check_start)
    create = expose(StrategyService.create)
    delete = expose(StrategyService.delete)
    get = expose(StrategyService.get)
    latest = expose(StrategyService.latest)
    list = expose(StrategyService.list)
    set_active = expose(StrategyService.set_active)
    versions = expose(StrategyService.versions)


class StrategyRuns(Facade):
    service = StrategyRunService
    list = expose(StrategyRunService.list)
    running = expose(StrategyRunService.running)
    start = expose(StrategyRunService.start)
    stop = expose(StrategyRunService.stop)


class Instruments(Facade):
    service = InstrumentService
    create = expose(InstrumentService.create)
    ensure = expose(InstrumentService.ensure)
    apply_exchange_rules = expose(InstrumentService.apply_exchange_rules)
    get = expose(InstrumentService.get)
    list = expose(InstrumentService.list)


class Orders(Facade):
    service = OrderService
    by_broker_id = expose(OrderService.by_broker_id)
    by_client_id = expose(OrderService.by_client_id)
    cancel = expose(OrderService.cancel)
    get = expose(OrderService.get)
    list = expose(OrderService.list)
    open_orders = expose(OrderService.open_orders)
    place = expose(OrderService.place)
    record_broker_id = expose(OrderService.record_broker_id)
    update_status = expose(OrderService.update_status)


class Trades(Facade):
    service = TradeService
    get = expose(TradeService.get)
    ingest_fill = expose(TradeService.ingest_fill)
    ingest_fills = expose(TradeService.ingest_fills)
    last_broker_trade_ids = expose(TradeService.last_broker_trade_ids)
    list = expose(TradeService.list)
    pnl = expose(TradeService.pnl)


class Positions(Facade):
    service = PositionService
    apply_fill = expose(PositionService.apply_fill)
    recompute = expose(PositionService.recompute)
    repair = expose(PositionService.repair)
    snapshot = expose(PositionService.snapshot)
    verify = expose(PositionService.verify)


class Cash(Facade):
    service = CashService
    adjust = expose(CashService.adjust)
    balances = expose(CashService.balances)
    deposit = expose(CashService.deposit)
    movements = expose(CashService.movements)
    record = expose(CashService.record)
    withdraw = expose(CashService.withdraw)


class Risk(Facade):
    service = RiskService
    applicable_policies = expose(RiskService.applicable_policies)
    breaches = expose(RiskService.breaches)
    create_policy = expose(RiskService.create_policy)
    delete_policy = expose(RiskService.delete_policy)
    evaluate = expose(RiskService.evaluate)
    list_policies = expose(RiskService.list_policies)
    load_policies = expose(RiskService.load_policies)
    record_breach = expose(RiskService.record_breach)
    set_active = expose(RiskService.set_active)
    snapshot = expose(RiskService.snapshot)
    update_policy = expose(RiskService.update_policy)


class Alerts(Facade):
    service = AlertService
    create = expose(AlertService.create)
    delete = expose(AlertService.delete)
    get = expose(AlertService.get)
    list = expose(AlertService.list)
    set_active = expose(AlertService.set_active)
    update_config = expose(AlertService.update_config)


class Schedules(Facade):
    service = ScheduleService
    create = expose(ScheduleService.create)
    delete = expose(ScheduleService.delete)
    due = expose(ScheduleService.due)
    get = expose(ScheduleService.get)
    list = expose(ScheduleService.list)
    mark_run = expose(ScheduleService.mark_run)
    set_active = expose(ScheduleService.set_active)
    update = expose(ScheduleService.update)


class Screeners(Facade):
    service = ScreenerService
    create = expose(ScreenerService.create)
    delete = expose(ScreenerService.delete)
    get = expose(ScreenerService.get)
    list = expose(ScreenerService.list)
    set_active = expose(ScreenerService.set_active)
    update_config = expose(ScreenerService.update_config)


class Marks(Facade):
    service = MarkService
    latest = expose(MarkService.latest)
    save = expose(MarkService.save)


class UnappliedEvents(Facade):
    service = UnappliedEventService
    applied = expose(UnappliedEventService.applied)
    failed_again = expose(UnappliedEventService.failed_again)
    keep = expose(UnappliedEventService.keep)
    list = expose(UnappliedEventService.list)
    pending = expose(UnappliedEventService.pending)


class Equity(Facade):
    service = EquityService
    curve = expose(EquityService.curve)
    history = expose(EquityService.history)
    profit = expose(EquityService.profit)
    snapshot = expose(EquityService.snapshot)
    snapshot_all = expose(EquityService.snapshot_all)


class Valuation(Facade):
    service = ValuationService
    balances = expose(ValuationService.balances)
    check_order = expose(ValuationService.check_order)
    totals = expose(ValuationService.totals)
    value = expose(ValuationService.value)


class Audit(Facade):
    service = AuditLogger
    log = expose(AuditLogger.log)
    recent = expose(AuditLogger.recent)


class Services:
    """Every service's facade over one runner (``run_method``): a ``Session`` and a
    ``ScopedDal`` are both ``Services``."""

    async def run_method(
        self,
        service: type[Any],
        method: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        raise NotImplementedError

    @property
    def users(self) -> Users:
        return Users(self)

    @property
    def brokers(self) -> Brokers:
        return Brokers(self)

    @property
    def accounts(self) -> Accounts:
        return Accounts(self)

    @property
    def portfolios(self) -> Portfolios:
        return Portfolios(self)

    @property
    def strategies(self) -> Strategies:
        return Strategies(self)

    @property
    def strategy_runs(self) -> StrategyRuns:
        return StrategyRuns(self)

    @property
    def instruments(self) -> Instruments:
        return Instruments(self)

    @property
    def orders(self) -> Orders:
        return Orders(self)

    @property
    def trades(self) -> Trades:
        return Trades(self)

    @property
    def positions(self) -> Positions:
        return Positions(self)

    @property
    def cash(self) -> Cash:
        return Cash(self)

    @property
    def risk(self) -> Risk:
        return Risk(self)

    @property
    def alerts(self) -> Alerts:
        return Alerts(self)

    @property
    def schedules(self) -> Schedules:
        return Schedules(self)

    @property
    def screeners(self) -> Screeners:
        return Screeners(self)

    @property
    def audit(self) -> Audit:
        return Audit(self)

    @property
    def marks(self) -> Marks:
        return Marks(self)

    @property
    def unapplied_events(self) -> UnappliedEvents:
        return UnappliedEvents(self)

    @property
    def equity(self) -> Equity:
        return Equity(self)

    @property
    def valuation(self) -> Valuation:
        return Valuation(self)


def facades() -> dict[str, type[Facade]]:
    """Each ``Services`` attribute name and its facade class (for tests and tooling)."""
    return {
        name: get_type_hints(value.fget)["return"]
        for name, value in vars(Services).items()
        if isinstance(value, property)
    }


class TxServices:
    """The services of one transaction, called directly (no ``await``): what a unit of work
    run by ``ScopedDal.run`` is given. The same methods as ``Services``, on the same
    user-scoped transaction, without a hop to the event loop between calls."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    @property
    def users(self) -> UserService:
        return UserService(self._tx)

    @property
    def brokers(self) -> BrokerService:
        return BrokerService(self._tx)

    @property
    def accounts(self) -> AccountService:
        return AccountService(self._tx)

    @property
    def portfolios(self) -> PortfolioService:
        return PortfolioService(self._tx)

    @property
    def strategies(self) -> StrategyService:
        return StrategyService(self._tx)

    @property
    def strategy_runs(self) -> StrategyRunService:
        return StrategyRunService(self._tx)

    @property
    def instruments(self) -> InstrumentService:
        return InstrumentService(self._tx)

    @property
    def orders(self) -> OrderService:
        return OrderService(self._tx)

    @property
    def trades(self) -> TradeService:
        return TradeService(self._tx)

    @property
    def positions(self) -> PositionService:
        return PositionService(self._tx)

    @property
    def cash(self) -> CashService:
        return CashService(self._tx)

    @property
    def risk(self) -> RiskService:
        return RiskService(self._tx)

    @property
    def alerts(self) -> AlertService:
        return AlertService(self._tx)

    @property
    def schedules(self) -> ScheduleService:
        return ScheduleService(self._tx)

    @property
    def screeners(self) -> ScreenerService:
        return ScreenerService(self._tx)

    @property
    def audit(self) -> AuditLogger:
        return AuditLogger(self._tx)

    @property
    def marks(self) -> MarkService:
        return MarkService(self._tx)

    @property
    def unapplied_events(self) -> UnappliedEventService:
        return UnappliedEventService(self._tx)

    @property
    def equity(self) -> EquityService:
        return EquityService(self._tx)

    @property
    def valuation(self) -> ValuationService:
        return ValuationService(self._tx)


def tx_services() -> dict[str, type[Any]]:
    """Each ``TxServices`` attribute name and its service class (for tests)."""
    return {
        name: get_type_hints(value.fget)["return"]
        for name, value in vars(TxServices).items()
        if isinstance(value, property)
    }
